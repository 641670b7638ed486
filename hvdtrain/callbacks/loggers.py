"""CSV and TensorBoard logging of epoch metrics, on rank 0 only."""
from __future__ import annotations

import csv
import os
import sys
import time
import types
from pathlib import Path
from typing import Any

from hvdtrain.callbacks.base import Callback, Order
from hvdtrain.core.context import TrainContext
from hvdtrain.core.distributed import rank_zero_only


class CSVLogger(Callback):
    """Writes one row of epoch metrics per epoch to a CSV file (kept across resumes).

    A row for an epoch that is run again (a resume from an older checkpoint, or an elastic job rolled
    back to its last commit) replaces the rows of that epoch and later ones, so each epoch has one row.
    """

    order = Order.LOGGING

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    @rank_zero_only
    def on_epoch_end(self, ctx: TrainContext) -> None:
        row = {"epoch": ctx.epoch + 1, "global_step": ctx.global_step,
               **{k: float(v) for k, v in sorted(ctx.logs.items())}}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        existing, rows = self._read()
        fields = existing + sorted(set(row) - set(existing)) if existing else list(row)
        kept = [r for r in rows if int(r["epoch"]) < row["epoch"]]
        if fields != existing or len(kept) < len(rows):
            self._rewrite(fields, kept)
        with open(self.path, "a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fields, restval="")
            if f.tell() == 0:
                writer.writeheader()
            writer.writerow(row)

    def _read(self) -> tuple[list[str], list[dict[str, str]]]:
        if not self.path.is_file() or self.path.stat().st_size == 0:
            return [], []
        with open(self.path, newline="") as f:
            reader = csv.DictReader(f)
            return list(reader.fieldnames or []), list(reader)

    def _rewrite(self, fields: list[str], rows: list[dict[str, str]]) -> None:
        tmp = self.path.with_suffix(".tmp")
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fields, restval="")
            writer.writeheader()
            writer.writerows(rows)
        os.replace(tmp, self.path)


class TensorBoardLogger(Callback):
    """Writes epoch metrics (and the batch loss every n steps) as TensorBoard scalars.

    Uses the ``tensorboard`` package directly, so it works with either framework.
    """

    order = Order.LOGGING

    def __init__(self, log_dir: str | os.PathLike, log_every_n_steps: int = 50) -> None:
        self.log_dir = Path(log_dir)
        self.log_every_n_steps = log_every_n_steps
        self._writer: Any | None = None

    # The writer is opened by whichever process is rank 0 when there is something to write: under
    # elastic training the rank-0 role moves to another process when rank 0 is lost.

    @rank_zero_only
    def on_batch_end(self, ctx: TrainContext) -> None:
        if self.log_every_n_steps and ctx.global_step % self.log_every_n_steps == 0 and "loss" in ctx.logs:
            self._scalars({"batch/loss": float(ctx.logs["loss"])}, ctx.global_step)

    @rank_zero_only
    def on_epoch_end(self, ctx: TrainContext) -> None:
        self._scalars({f"epoch/{k}": float(v) for k, v in ctx.logs.items()}, ctx.epoch + 1)
        self._writer.flush()

    def on_train_end(self, ctx: TrainContext) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def on_exception(self, ctx: TrainContext, error: BaseException) -> None:
        self.on_train_end(ctx)

    def on_world_change(self, ctx: TrainContext, old_size: int, new_size: int) -> None:
        if not ctx.is_root:  # rank 0 moved elsewhere: its writer goes on there
            self.on_train_end(ctx)

    def _open(self) -> Any:
        if "tensorflow" not in sys.modules:
            # tensorboard's file I/O would import all of TensorFlow (seconds, hundreds of MB) into a
            # PyTorch job; this documented switch makes it use its built-in stub instead.
            sys.modules.setdefault("tensorboard.compat.notf", types.ModuleType("tensorboard.compat.notf"))
        from tensorboard.summary.writer.event_file_writer import EventFileWriter

        self.log_dir.mkdir(parents=True, exist_ok=True)
        return EventFileWriter(str(self.log_dir))

    def _scalars(self, values: dict[str, float], step: int) -> None:
        from tensorboard.compat.proto.event_pb2 import Event
        from tensorboard.compat.proto.summary_pb2 import Summary

        summary = Summary(value=[Summary.Value(tag=k, simple_value=v) for k, v in values.items()])
        if self._writer is None:
            self._writer = self._open()
        self._writer.add_event(Event(wall_time=time.time(), step=step, summary=summary))
