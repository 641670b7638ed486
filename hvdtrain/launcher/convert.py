"""``hvdtrain convert-checkpoint``: rewrite a checkpoint of hvdtrain 0.1.0 (a pickle) in the safe format.

This module is the one place in hvdtrain that unpickles a checkpoint (``_unpickle_legacy``). It runs
only when a user names a file on the command line and confirms, after a warning, that they trust it.
It writes ``NAME.safe.ckpt`` beside the old file and never changes or deletes the old one. Every
other load path reads only the safe format (``hvdtrain.core.state_codec``), which holds no pickle.
"""
from __future__ import annotations

import io
import os
import pickle
from pathlib import Path
from typing import Any

from hvdtrain.core.checkpoint_io import CheckpointError, read_checkpoint, write_checkpoint
from hvdtrain.core.state_codec import converted_path, is_safe_payload
from hvdtrain.launcher.errors import LaunchError

FRAMEWORKS = ("torch", "tensorflow")


class AlreadySafeError(LaunchError):
    """The checkpoint is already in the safe format: there is nothing to convert."""


def trust_warning(path: str | os.PathLike) -> str:
    """What the user is told before a legacy checkpoint is unpickled."""
    return (f"WARNING: {path} is a checkpoint of hvdtrain 0.1.0, stored as a pickle. Converting it unpickles "
            "it, and unpickling runs any code stored in the file, with your permissions. Convert only "
            "checkpoints you wrote yourself or otherwise trust.")


def read_legacy(path: str | os.PathLike) -> tuple[dict[str, Any], bytes]:
    """Read and verify a checkpoint that needs converting (nothing is unpickled here).

    Raises:
        AlreadySafeError: the file is already in the safe format.
        LaunchError: the file is missing or damaged.
    """
    path = Path(path)
    if not path.is_file():
        raise LaunchError(f"checkpoint {path} does not exist; pass a .ckpt file written by hvdtrain 0.1.0")
    try:
        header, payload = read_checkpoint(path)
    except CheckpointError as err:
        raise LaunchError(f"{err} (nothing was converted)") from err
    if is_safe_payload(payload):
        raise AlreadySafeError(f"{path} is already in the safe format: resume from it as it is")
    return header, payload


def convert_checkpoint(path: str | os.PathLike, output: str | os.PathLike | None = None) -> Path:
    """Unpickle a legacy checkpoint the user trusts and write it in the safe format.

    Args:
        path: the hvdtrain 0.1.0 checkpoint; it is left as it is.
        output: the new file (default: ``NAME.safe.ckpt`` beside ``path``); it must not exist.

    Returns:
        The new checkpoint, written atomically with the old header's fields (epoch, step, score, ...).

    Raises:
        LaunchError: the file cannot be converted; the message says why.
    """
    path = Path(path)
    header, payload = read_legacy(path)
    target = Path(output) if output is not None else converted_path(path)
    if target.exists():
        raise LaunchError(f"{target} already exists; delete it or pass --output (nothing was converted)")
    framework = _framework(header, payload, path)
    adapter = _adapter(framework)
    state = _unpickle_legacy(payload, framework)
    try:
        safe_payload = adapter.serialize(state)
        adapter.deserialize(safe_payload)  # it must read back through the safe path
    except (TypeError, CheckpointError) as err:
        raise LaunchError(f"{path} holds state the safe format cannot store: {err}") from err
    new_header = {k: v for k, v in header.items() if k not in ("payload_bytes", "payload_sha256")}
    write_checkpoint(target, dict(new_header, converted_from=path.name), safe_payload)
    return target


def _framework(header: dict[str, Any], payload: bytes, path: Path) -> str:
    framework = header.get("framework") or ("torch" if payload.startswith(b"PK\x03\x04") else "tensorflow")
    if framework not in FRAMEWORKS:
        raise LaunchError(f"{path} was written by the {framework!r} adapter; hvdtrain converts "
                          f"{' and '.join(FRAMEWORKS)} checkpoints")
    return framework


def _adapter(framework: str) -> Any:
    """The framework adapter whose safe format the checkpoint is rewritten in (no Horovod job needed)."""
    from hvdtrain.core.backend import SerialBackend

    if framework == "torch":
        from hvdtrain.torch.adapter import TorchAdapter

        return TorchAdapter(SerialBackend())
    from hvdtrain.tensorflow.adapter import TensorFlowAdapter

    return TensorFlowAdapter(SerialBackend())


def _unpickle_legacy(payload: bytes, framework: str) -> Any:
    """UNSAFE BY DESIGN: unpickle a hvdtrain 0.1.0 payload, running any code stored in it.

    Reached only from ``hvdtrain convert-checkpoint``, after the user confirmed they trust the file.
    """
    if framework == "torch":
        import torch

        return torch.load(io.BytesIO(payload), map_location="cpu", weights_only=False)  # opt-in: user trusts it
    return pickle.loads(payload)  # opt-in: user trusts it
