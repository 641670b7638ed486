"""CheckpointManager: which checkpoints to keep, and which one to resume from.

The policy (keep the last N and the best k by a monitored score) is kept apart
from the file format in ``checkpoint_io``. Only rank 0 calls ``save``; the
bookkeeping lives in the checkpoint headers, so the directory is the index.

A checkpoint is one file, or (a model split into pipeline stages) a directory: one part file per
stage, written by that stage, and a manifest written last by rank 0 once every part is on disk. A
directory without its manifest, or with a part that fails its checksum, is not a checkpoint.
"""
from __future__ import annotations

import logging
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hvdtrain.core.checkpoint_io import (
    CheckpointError,
    read_checkpoint,
    read_header,
    remove_stale_temp_files,
    write_checkpoint,
)

__all__ = ["CheckpointError", "CheckpointInfo", "CheckpointManager"]

log = logging.getLogger("hvdtrain.checkpoint")
SUFFIX = ".ckpt"
MANIFEST = "manifest" + SUFFIX


def part_name(stage: int, tensor_rank: int | None = None) -> str:
    """The file a pipeline stage's state (or its ``tensor_rank``-th tensor slice's) is written to, inside a
    checkpoint directory."""
    return f"stage{stage:03d}{'' if tensor_rank is None else f'-tensor{tensor_rank:03d}'}{SUFFIX}"


def layout_part_name(layout: Any) -> str:
    """The part file of a rank with this ``Layout``."""
    return part_name(layout.stage, layout.tensor_rank if layout.tensor > 1 else None)


@dataclass(frozen=True)
class CheckpointInfo:
    """A checkpoint on disk, described by its header."""

    path: Path
    epoch: int
    global_step: int
    score: float | None
    header: dict[str, Any]

    @property
    def parts(self) -> dict[str, str]:
        """{part file: its payload's SHA-256} of a checkpoint directory; {} for a single file."""
        return dict(self.header.get("parts") or {})


class CheckpointManager:
    """Keeps the last ``keep_last`` checkpoints and the best ``keep_best`` by score.

    Args:
        directory: where checkpoints live (created on save).
        keep_last: newest checkpoints to keep, by global step (>= 1).
        keep_best: best checkpoints to keep by ``score`` (0 disables).
        mode: ``"min"`` or ``"max"``: which scores are better.
        prefix: file name prefix.
    """

    def __init__(self, directory: str | os.PathLike, keep_last: int = 2, keep_best: int = 1,
                 mode: str = "min", prefix: str = "ckpt") -> None:
        if keep_last < 1:
            raise ValueError(f"keep_last must be >= 1 (got {keep_last}): the newest checkpoint is what resume uses")
        if keep_best < 0:
            raise ValueError(f"keep_best must be >= 0 (got {keep_best})")
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max' (got {mode!r})")
        self.directory = Path(directory)
        self.keep_last = keep_last
        self.keep_best = keep_best
        self.mode = mode
        self.prefix = prefix

    def path_for(self, epoch: int, global_step: int) -> Path:
        directory = self.directory_for(epoch, global_step)
        return directory.with_name(directory.name + SUFFIX)

    def directory_for(self, epoch: int, global_step: int) -> Path:
        """Where a checkpoint of parts (one per pipeline stage) for this point goes."""
        return self.directory / f"{self.prefix}-epoch{epoch:04d}-step{global_step:08d}"

    def checkpoints(self) -> list[CheckpointInfo]:
        """Checkpoints with readable headers, oldest first. Unreadable ones are logged and skipped."""
        infos = []
        for path in sorted(self.directory.glob(f"{self.prefix}-*")):
            header_file = path / MANIFEST if path.is_dir() else path
            if header_file.suffix != SUFFIX or not header_file.is_file():
                continue  # not a checkpoint, or a directory whose save was cut short before its manifest
            try:
                header = read_header(header_file)
            except (CheckpointError, OSError) as err:
                log.warning("skipping unreadable checkpoint: %s", err)
                continue
            infos.append(CheckpointInfo(path, int(header["epoch"]), int(header["global_step"]),
                                        header.get("score"), header))
        return sorted(infos, key=lambda i: (i.global_step, i.epoch, i.path.name))

    def save_part(self, checkpoint: Path, name: str, payload: bytes, header: dict[str, Any]) -> Path:
        """Write the part file ``name`` (``part_name``) of checkpoint directory ``checkpoint``."""
        checkpoint.mkdir(parents=True, exist_ok=True)
        return write_checkpoint(checkpoint / name, header, payload)

    def save_manifest(self, checkpoint: Path, payload: bytes, parts: dict[str, str], *, epoch: int,
                      global_step: int, score: float | None = None,
                      metadata: dict[str, Any] | None = None) -> Path:
        """Commit checkpoint directory ``checkpoint`` with its manifest, then prune.

        Args:
            parts: {part file: its payload's SHA-256}, as the stages reported them.

        Raises:
            CheckpointError: a part is not in ``checkpoint`` as seen from here (no shared file system).
        """
        for name, digest in parts.items():
            if not (checkpoint / name).is_file() or read_header(checkpoint / name).get("payload_sha256") != digest:
                raise CheckpointError(f"{checkpoint / name} was written by its stage but this rank does not see it: "
                                      "every rank must reach the checkpoint directory (a shared file system)")
        header = dict(metadata or {}, epoch=epoch, global_step=global_step, score=_finite_or_none(score),
                      mode=self.mode, parts=parts)
        write_checkpoint(checkpoint / MANIFEST, header, payload)
        self._prune(keep=checkpoint)
        return checkpoint

    def save(self, payload: bytes, *, epoch: int, global_step: int, score: float | None = None,
             metadata: dict[str, Any] | None = None) -> Path:
        """Write a checkpoint atomically, then delete those the policy no longer keeps."""
        self.directory.mkdir(parents=True, exist_ok=True)
        remove_stale_temp_files(self.directory)
        header = dict(metadata or {}, epoch=epoch, global_step=global_step,
                      score=_finite_or_none(score), mode=self.mode)
        path = write_checkpoint(self.path_for(epoch, global_step), header, payload)
        self._prune(keep=path)
        return path

    def _prune(self, keep: Path) -> None:
        infos = self.checkpoints()
        kept = {i.path for i in infos[-self.keep_last:]} | {i.path for i in self.best(self.keep_best, infos)}
        for info in infos:
            if info.path not in kept and info.path != keep:
                _remove(info.path)
                log.debug("removed old checkpoint %s", info.path)
        for cut_short in self.directory.glob(f"{self.prefix}-*"):
            if cut_short.is_dir() and cut_short != keep and not (cut_short / MANIFEST).exists():
                _remove(cut_short)

    def best(self, k: int = 1, infos: list[CheckpointInfo] | None = None) -> list[CheckpointInfo]:
        """The ``k`` best-scored checkpoints, best first."""
        scored = [i for i in (infos if infos is not None else self.checkpoints()) if i.score is not None]
        return sorted(scored, key=lambda i: i.score, reverse=self.mode == "max")[:k]

    def load_latest(self) -> tuple[CheckpointInfo, bytes] | None:
        """The newest checkpoint that verifies, falling back past corrupted ones.

        Returns:
            ``(info, payload)``, or None when the directory holds no valid checkpoint.
        """
        for info in reversed(self.checkpoints()):
            try:
                payload = read_verified(info)
            except CheckpointError as err:
                log.error("%s; falling back to the previous checkpoint", err)
                continue
            return info, payload
        return None


def read_verified(info: CheckpointInfo) -> bytes:
    """A checkpoint's payload (a directory's manifest), after every part of it passed its checksum.

    Raises:
        CheckpointError: the file, the manifest or a part is missing, truncated, corrupted or stale.
    """
    if not info.path.is_dir():
        return read_checkpoint(info.path)[1]
    _, payload = read_checkpoint(info.path / MANIFEST)
    for name, digest in info.parts.items():
        part = info.path / name
        if not part.is_file():
            raise CheckpointError(f"{info.path} is incomplete: its part {name} is missing")
        header, _ = read_checkpoint(part)
        if header.get("payload_sha256") != digest:
            raise CheckpointError(f"{part} is not the part its manifest names (another save's file)")
    return payload


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def load_file(path: str | os.PathLike) -> tuple[CheckpointInfo, bytes]:
    """Load one specific checkpoint (a file, or a directory of stage parts), verifying it.

    Raises:
        CheckpointError: missing, truncated or corrupted file.
    """
    path = Path(path)
    header_file = path / MANIFEST if path.is_dir() else path
    if not header_file.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; pass a file written by ModelCheckpoint "
                              "or its directory")
    header = read_header(header_file)
    info = CheckpointInfo(path, int(header["epoch"]), int(header["global_step"]), header.get("score"), header)
    return info, read_verified(info)


def _finite_or_none(score: float | None) -> float | None:
    if score is None:
        return None
    score = float(score)
    return score if math.isfinite(score) else None
