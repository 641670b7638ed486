"""CheckpointManager: which checkpoints to keep, and which one to resume from.

The policy (keep the last N and the best k by a monitored score) is kept apart
from the file format in ``checkpoint_io``. Only rank 0 calls ``save``; the
bookkeeping lives in the checkpoint headers, so the directory is the index.
"""
from __future__ import annotations

import logging
import math
import os
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


@dataclass(frozen=True)
class CheckpointInfo:
    """A checkpoint on disk, described by its header."""

    path: Path
    epoch: int
    global_step: int
    score: float | None
    header: dict[str, Any]


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
        return self.directory / f"{self.prefix}-epoch{epoch:04d}-step{global_step:08d}{SUFFIX}"

    def checkpoints(self) -> list[CheckpointInfo]:
        """Checkpoints with readable headers, oldest first. Unreadable ones are logged and skipped."""
        infos = []
        for path in sorted(self.directory.glob(f"{self.prefix}-*{SUFFIX}")):
            try:
                header = read_header(path)
            except (CheckpointError, OSError) as err:
                log.warning("skipping unreadable checkpoint: %s", err)
                continue
            infos.append(CheckpointInfo(path, int(header["epoch"]), int(header["global_step"]),
                                        header.get("score"), header))
        return sorted(infos, key=lambda i: (i.global_step, i.epoch, i.path.name))

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
                info.path.unlink(missing_ok=True)
                log.debug("removed old checkpoint %s", info.path)

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
                _, payload = read_checkpoint(info.path)
            except CheckpointError as err:
                log.error("%s; falling back to the previous checkpoint", err)
                continue
            return info, payload
        return None


def load_file(path: str | os.PathLike) -> tuple[CheckpointInfo, bytes]:
    """Load one specific checkpoint file, verifying it.

    Raises:
        CheckpointError: missing, truncated or corrupted file.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; pass a file written by ModelCheckpoint "
                              "or its directory")
    header, payload = read_checkpoint(path)
    return CheckpointInfo(path, int(header["epoch"]), int(header["global_step"]), header.get("score"),
                          header), payload


def _finite_or_none(score: float | None) -> float | None:
    if score is None:
        return None
    score = float(score)
    return score if math.isfinite(score) else None
