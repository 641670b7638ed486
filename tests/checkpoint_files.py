"""Checkpoint files the tests plant: hvdtrain 0.1.0's pickle format, and pickles that run a command."""
from __future__ import annotations

import io
import json
import os
import pickle
from pathlib import Path
from typing import Any

from hvdtrain.core.checkpoint_io import read_checkpoint, write_checkpoint
from hvdtrain.core.state_codec import MAGIC


class Touch:
    """Unpickling this runs a shell command that creates ``marker``: the attack a safe loader must refuse."""

    def __init__(self, marker: str | os.PathLike) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def legacy_payload(state: Any, framework: str) -> bytes:
    """``state`` as hvdtrain 0.1.0 wrote it: ``torch.save`` (PyTorch) or ``pickle.dumps`` (TensorFlow)."""
    if framework == "torch":
        import torch

        buffer = io.BytesIO()
        torch.save(state, buffer)
        return buffer.getvalue()
    return pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL)


def rewrite_as_legacy(path: Path, adapter: Any, target: Path | None = None) -> Path:
    """Rewrite a checkpoint (same header, same state) in hvdtrain 0.1.0's format, at ``target`` or in place."""
    header, payload = read_checkpoint(path)
    state = adapter.deserialize(payload)
    fields = {k: v for k, v in header.items() if k not in ("payload_bytes", "payload_sha256")}
    (target or path).parent.mkdir(parents=True, exist_ok=True)
    return write_checkpoint(target or path, fields, legacy_payload(state, header["framework"]))


def pickled_section_payload(marker: Path, framework: str) -> bytes:
    """A payload in the safe format whose array section is a pickle that runs ``touch marker``.

    PyTorch: a ``torch.save`` list holding the command; TensorFlow: an ``.npz`` with an object array.
    """
    if framework == "torch":
        tag, section = "$tensor", legacy_payload([Touch(marker)], "torch")
    else:
        import numpy as np

        buffer = io.BytesIO()
        np.savez(buffer, a0=np.array([Touch(marker)], dtype=object))  # np.savez pickles object arrays
        tag, section = "$array", buffer.getvalue()
    index = {"sections": [{"tag": tag, "bytes": len(section), "meta": {"count": 1}}],
             "tree": {"model_optimizer": {tag: 0}, "progress": {}}}
    return MAGIC + json.dumps(index).encode() + b"\n" + section


def plant_pickle(directory: Path, marker: Path, framework: str, where: str = "payload", epoch: int = 1,
                 global_step: int = 10, world_size: int = 2) -> Path:
    """A checkpoint with a valid header and checksum holding a pickle that runs ``touch marker`` when loaded.

    Args:
        where: "payload": the whole payload is the pickle (hvdtrain 0.1.0's format); "section": a safe
            payload whose array section is the pickle.
    """
    directory.mkdir(parents=True, exist_ok=True)
    header = {"epoch": epoch, "global_step": global_step, "world_size": world_size, "framework": framework,
              "score": None, "mode": "min", "monitor": None}
    if where == "payload":
        payload = legacy_payload({"model_optimizer": Touch(marker), "progress": {}}, framework)
    else:
        payload = pickled_section_payload(marker, framework)
    return write_checkpoint(directory / f"ckpt-epoch{epoch:04d}-step{global_step:08d}.ckpt", header, payload)
