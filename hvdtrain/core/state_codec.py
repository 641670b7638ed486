"""Checkpoint payloads that load without running code: JSON for structure, array formats for data.

A payload is a magic line, an index line of JSON, then the array sections it lists, in order::

    HVDTRAIN-STATE 1\n
    {"sections": [{"tag": "$array", "bytes": 1234, "meta": {...}}, ...], "tree": <the state>}\n
    <section bytes>

The tree is the state as JSON: counters, history, callback and RNG states, and the structure of
the model and optimizer state. Each array in it is replaced by a tag naming its place in a section
(``{"$array": 3}``). NumPy arrays go to an ``.npz`` section read with ``allow_pickle=False``; a
framework adapter adds its own section through a ``LeafCodec`` (PyTorch: ``torch.save``, read back
with ``weights_only=True``). Nothing in a payload is unpickled, so loading one cannot run code.

Python values JSON lacks are tagged as well: tuples (``$tuple``), dicts whose keys are not all
strings, or that carry a ``_metadata`` dict as ``torch.nn.Module.state_dict()`` does (``$dict``),
and non-finite floats (``$float``). Anything else is refused when saving, naming where it is.

Payloads of hvdtrain 0.1.0 were pickles; decoding one raises ``LegacyCheckpointError``, and
``hvdtrain convert-checkpoint`` (the one place that unpickles, on the user's say-so) converts it.
"""
from __future__ import annotations

import io
import json
import math
import numbers
import os
from collections import OrderedDict
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from hvdtrain.core.checkpoint_io import CheckpointError

MAGIC = b"HVDTRAIN-STATE 1\n"
CONVERT_COMMAND = "hvdtrain convert-checkpoint"
CONVERTED_SUFFIX = ".safe.ckpt"
_MAX_INDEX_BYTES = 1 << 30


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint that only a pickle loader could read: refused, since loading it could run code."""


class LegacyCheckpointError(UnsafeCheckpointError):
    """A checkpoint in hvdtrain 0.1.0's pickle format; ``hvdtrain convert-checkpoint`` converts it."""


class LeafCodec(Protocol):
    """How a framework's arrays (leaves of the state) are stored in a section of their own.

    Attributes:
        tag: the JSON key that marks one of these leaves in the tree, e.g. ``"$tensor"``; it starts with
            ``$`` and names the section too.
    """

    tag: str

    def accepts(self, obj: Any) -> bool:
        """Whether ``obj`` is a leaf this codec stores."""

    def dump(self, leaves: list[Any]) -> tuple[bytes, dict[str, Any]]:
        """The section's bytes for ``leaves``, and JSON metadata that ``load`` gets back."""

    def load(self, data: bytes, meta: dict[str, Any]) -> list[Any]:
        """The leaves stored by ``dump``, without unpickling anything.

        Raises:
            UnsafeCheckpointError: the section holds something only a pickle loader could read.
            CheckpointError: the section is damaged.
        """


class NumpyArrays:
    """NumPy arrays in an ``.npz`` section, read with ``allow_pickle=False``.

    Arrays of extension dtypes NumPy cannot name in a file (``bfloat16`` and the other ``ml_dtypes``)
    are stored as raw bytes of the same width, their dtype kept in the section's metadata.
    """

    tag = "$array"

    def accepts(self, obj: Any) -> bool:
        return isinstance(obj, np.ndarray)

    def dump(self, leaves: list[Any]) -> tuple[bytes, dict[str, Any]]:
        arrays, extension_dtypes = {}, {}
        for index, array in enumerate(leaves):
            if array.dtype.hasobject:
                raise TypeError(f"a NumPy array of dtype {array.dtype} holds Python objects, which a checkpoint "
                                "cannot store without pickle; convert it to a numeric array or a list")
            if array.dtype.kind == "V" and array.dtype.fields is None:
                extension_dtypes[str(index)] = array.dtype.name
                array = array.view(f"u{array.dtype.itemsize}")
            arrays[f"a{index}"] = array
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        return buffer.getvalue(), {"count": len(leaves), "extension_dtypes": extension_dtypes}

    def load(self, data: bytes, meta: dict[str, Any]) -> list[Any]:
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as npz:
                arrays = [npz[f"a{index}"] for index in range(int(meta["count"]))]
        except ValueError as err:
            raise UnsafeCheckpointError(f"its array section holds pickled objects, which hvdtrain never writes "
                                        f"(NumPy refused it: {err}); the file was crafted or damaged") from err
        except (OSError, KeyError, TypeError, AttributeError) as err:
            raise CheckpointError(f"its array section is damaged ({err})") from err
        for index, name in meta.get("extension_dtypes", {}).items():
            arrays[int(index)] = arrays[int(index)].view(_extension_dtype(name))
        return arrays


def _extension_dtype(name: str) -> np.dtype:
    try:
        import ml_dtypes
    except ImportError as err:
        raise CheckpointError(f"the checkpoint holds {name} arrays, which need the ml_dtypes package; "
                              "pip install ml_dtypes (TensorFlow and JAX install it)") from err
    if not hasattr(ml_dtypes, name):
        raise CheckpointError(f"the checkpoint holds arrays of dtype {name!r}, which ml_dtypes does not know")
    return np.dtype(getattr(ml_dtypes, name))


def encode_state(state: Any, codecs: tuple[LeafCodec, ...] = ()) -> bytes:
    """Encode ``state`` (nested dicts, lists, tuples, scalars, strings, None and arrays) as a safe payload.

    Args:
        state: the checkpoint state.
        codecs: framework leaf codecs, tried before NumPy's.

    Raises:
        TypeError: ``state`` holds a value no codec stores; the message says where.
    """
    encoder = _Encoder((*codecs, NumpyArrays()))
    tree = encoder.tree(state, "state")
    sections, blobs = [], []
    for codec in encoder.codecs:
        leaves = encoder.leaves[codec.tag]
        if leaves:
            data, meta = codec.dump(leaves)
            sections.append({"tag": codec.tag, "bytes": len(data), "meta": meta})
            blobs.append(data)
    index = json.dumps({"sections": sections, "tree": tree}, allow_nan=False, separators=(",", ":"))
    return b"".join([MAGIC, index.encode(), b"\n", *blobs])


def decode_state(payload: bytes, codecs: tuple[LeafCodec, ...] = ()) -> Any:
    """Decode what ``encode_state`` wrote, without unpickling anything.

    Raises:
        LegacyCheckpointError: the payload is a pickle (hvdtrain 0.1.0's format).
        UnsafeCheckpointError: a section holds pickled objects.
        CheckpointError: the payload is damaged or needs a codec not given.
    """
    index, body = _split(payload)
    by_tag = {codec.tag: codec for codec in (*codecs, NumpyArrays())}
    leaves, offset = {}, 0
    for section in index.get("sections", []):
        tag, size = section["tag"], int(section["bytes"])
        if tag not in by_tag:
            raise CheckpointError(f"the checkpoint holds {tag[1:]} leaves, which this framework adapter cannot read; "
                                  "resume it with the framework that wrote it (see the header's 'framework')")
        leaves[tag] = by_tag[tag].load(body[offset:offset + size], section.get("meta", {}))
        offset += size
    if offset != len(body):
        raise CheckpointError(f"its sections hold {offset} bytes but the payload has {len(body)} after the index")
    return _Decoder(leaves).value(index["tree"], "state")


def is_safe_payload(payload: bytes) -> bool:
    """Whether ``payload`` is in the safe format (no pickle inside by construction)."""
    return payload.startswith(MAGIC)


def _split(payload: bytes) -> tuple[dict[str, Any], bytes]:
    if not payload.startswith(MAGIC):
        raise _not_safe(payload)
    end = payload.find(b"\n", len(MAGIC), len(MAGIC) + _MAX_INDEX_BYTES)
    if end < 0:
        raise CheckpointError("its state index is cut off")
    try:
        index = json.loads(payload[len(MAGIC):end])
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"its state index is not valid JSON ({err})") from err
    if not isinstance(index, dict) or "tree" not in index:
        raise CheckpointError("its state index has no 'tree'")
    return index, payload[end + 1:]


def _not_safe(payload: bytes) -> CheckpointError:
    if payload.startswith(b"PK\x03\x04"):
        kind = "a torch.save archive (a pickle inside)"
    elif payload.startswith(b"\x80"):
        kind = "a Python pickle"
    else:
        return CheckpointError("its payload is in no format hvdtrain knows")
    return LegacyCheckpointError(f"its payload is {kind}: the format of hvdtrain 0.1.0. Loading a pickle runs "
                                 "whatever code is stored in it, so hvdtrain no longer loads them")


def legacy_message(path: str | os.PathLike, error: CheckpointError) -> str:
    """The refusal of a legacy checkpoint, with the command that converts it."""
    return (f"{path}: {error}. If you trust this file (you wrote it yourself), convert it once with "
            f"`{CONVERT_COMMAND} {path}`: it writes {converted_path(path).name} beside it, which resume then loads.")


def converted_path(path: str | os.PathLike) -> Path:
    """Where ``hvdtrain convert-checkpoint`` writes the safe copy of ``path``: ``NAME.safe.ckpt`` beside it."""
    path = Path(path)
    stem = path.name[:-len(".ckpt")] if path.name.endswith(".ckpt") else path.name
    return path.with_name(stem + CONVERTED_SUFFIX)


class _Encoder:
    """Turns a state into a JSON tree, collecting its arrays per codec."""

    def __init__(self, codecs: tuple[LeafCodec, ...]) -> None:
        self.codecs = codecs
        self.leaves: dict[str, list[Any]] = {codec.tag: [] for codec in codecs}

    def tree(self, obj: Any, path: str) -> Any:
        if obj is None or isinstance(obj, (bool, str)):
            return obj
        if isinstance(obj, np.bool_):
            return bool(obj)
        if isinstance(obj, numbers.Integral):
            return int(obj)
        if isinstance(obj, numbers.Real):
            value = float(obj)
            return value if math.isfinite(value) else {"$float": repr(value)}
        for codec in self.codecs:
            if codec.accepts(obj):
                self.leaves[codec.tag].append(obj)
                return {codec.tag: len(self.leaves[codec.tag]) - 1}
        if isinstance(obj, dict):
            return self._dict(obj, path)
        if isinstance(obj, list):
            return [self.tree(item, f"{path}[{i}]") for i, item in enumerate(obj)]
        if isinstance(obj, tuple):
            return {"$tuple": [self.tree(item, f"{path}[{i}]") for i, item in enumerate(obj)]}
        raise TypeError(f"{path} is a {type(obj).__module__}.{type(obj).__qualname__}, which a checkpoint cannot "
                        "hold without pickle. Checkpoint state may hold dicts, lists, tuples, str, int, float, "
                        "bool, None, tensors and NumPy arrays; return one of those from state_dict()")

    def _dict(self, obj: dict[Any, Any], path: str) -> Any:
        metadata = getattr(obj, "_metadata", None)
        plain = all(isinstance(k, str) and not k.startswith("$") for k in obj)
        if plain and metadata is None:
            return {k: self.tree(v, f"{path}[{k!r}]") for k, v in obj.items()}
        node: dict[str, Any] = {"$dict": [[self.tree(k, f"{path} key {k!r}"), self.tree(v, f"{path}[{k!r}]")]
                                          for k, v in obj.items()]}
        if metadata is not None:
            node["metadata"] = self.tree(metadata, f"{path}._metadata")
        return node


class _Decoder:
    """Turns a JSON tree back into the state, taking arrays from the decoded sections."""

    def __init__(self, leaves: dict[str, list[Any]]) -> None:
        self.leaves = leaves

    def value(self, node: Any, path: str) -> Any:
        if isinstance(node, list):
            return [self.value(item, f"{path}[{i}]") for i, item in enumerate(node)]
        if not isinstance(node, dict):
            return node
        tags = [key for key in node if key.startswith("$")]
        if not tags:
            return {k: self.value(v, f"{path}[{k!r}]") for k, v in node.items()}
        try:
            return self._tagged(tags[0], node, path)
        except (KeyError, IndexError, TypeError, ValueError) as err:
            raise CheckpointError(f"its state is damaged at {path} ({type(err).__name__}: {err})") from err

    def _tagged(self, tag: str, node: dict[str, Any], path: str) -> Any:
        if tag == "$tuple":
            return tuple(self.value(item, f"{path}[{i}]") for i, item in enumerate(node[tag]))
        if tag == "$float":
            return float({"nan": "nan", "inf": "inf", "-inf": "-inf"}[node[tag]])
        if tag == "$dict":
            return self._dict(node, path)
        if tag in self.leaves:
            index = node[tag]
            if not isinstance(index, int) or not 0 <= index < len(self.leaves[tag]):
                raise IndexError(f"{tag} {index!r} is not in its section")
            return self.leaves[tag][index]
        raise KeyError(f"unknown tag {tag!r}")

    def _dict(self, node: dict[str, Any], path: str) -> dict[Any, Any]:
        pairs = [(self.value(k, f"{path} key"), self.value(v, f"{path}[{k!r}]")) for k, v in node["$dict"]]
        if "metadata" not in node:
            return dict(pairs)
        result = OrderedDict(pairs)
        result._metadata = self.value(node["metadata"], f"{path}._metadata")  # type: ignore[attr-defined]
        return result
