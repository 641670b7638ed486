"""Framework-agnostic callbacks and data the multi-process test workers share (PyTorch and TensorFlow)."""
from __future__ import annotations

import argparse
import errno
import os
import resource
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from hvdtrain.callbacks import Callback, Order, ResumeFromCheckpoint
from hvdtrain.core.sharding import ShardedOrder
from tests.launch import report


class RankMetric(Callback):
    """Logs a metric whose value is the rank, before metric averaging runs."""

    order = Order.METRICS - 50

    def on_epoch_end(self, ctx):
        ctx.logs["rank_value"] = float(ctx.rank)


class Recorder(Callback):
    """Records what later callbacks would see: LR per batch, step counters, epoch logs."""

    order = Order.LEARNING_RATE + 1

    def __init__(self):
        self.lrs, self.epoch_logs, self.steps, self.world_changes = [], [], [], []

    def on_batch_begin(self, ctx):
        self.lrs.append(ctx.adapter.get_learning_rates(ctx.optimizer)[0])

    def on_batch_end(self, ctx):
        self.steps.append([ctx.epoch, ctx.batch_index, ctx.global_step, ctx.samples_seen_in_epoch])

    def on_epoch_end(self, ctx):
        self.epoch_logs.append({k: float(v) for k, v in ctx.logs.items()})

    def on_world_change(self, ctx, old_size, new_size):
        self.world_changes.append([old_size, new_size, ctx.epoch, ctx.global_step, ctx.samples_seen_in_epoch])


class DieAtStep(Callback):
    """Sends this process a signal at a global step: SIGKILL (a crash that leaves no chance to clean
    up) or SIGSTOP (a rank that stops making progress). With ``once_marker`` (a file path), only the
    first process to get there does, in the whole job: elastic training replays steps after a loss."""

    def __init__(self, step, rank, signum=signal.SIGKILL, once_marker=None):
        self.step, self.rank, self.signum, self.once_marker = step, rank, signum, once_marker

    def on_batch_end(self, ctx):
        if ctx.global_step == self.step and ctx.rank == self.rank and self._first():
            os.kill(os.getpid(), self.signum)

    def _first(self):
        if self.once_marker is None:
            return True
        try:
            os.close(os.open(self.once_marker, os.O_CREAT | os.O_EXCL))
        except FileExistsError:
            return False
        return True


class Plateau(Callback):
    """Logs a metric that never improves after epoch 1."""

    order = Order.METRICS - 50

    def on_epoch_end(self, ctx):
        ctx.logs["plateau"] = 1.0 if ctx.epoch == 0 else 2.0


class LimitFileSize(Callback):
    """From ``epoch`` on, rank 0 may write at most ``limit`` bytes to a file (RLIMIT_FSIZE): a full disk for it.

    Python ignores SIGXFSZ, so a write past the limit fails with EFBIG, as one on a full disk fails with ENOSPC.
    """

    def __init__(self, epoch: int, limit: int = 4096) -> None:
        self.epoch, self.limit, self.saved = epoch, limit, None

    def on_epoch_begin(self, ctx):
        if ctx.rank == 0 and ctx.epoch == self.epoch:
            self.saved = resource.getrlimit(resource.RLIMIT_FSIZE)
            resource.setrlimit(resource.RLIMIT_FSIZE, (self.limit, self.saved[1]))

    def on_exception(self, ctx, error):
        self.on_train_end(ctx)

    def on_train_end(self, ctx):
        if self.saved is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, self.saved)


class FillDisk(Callback):
    """At ``epoch``, rank 0 fills the file system holding ``directory`` (a small tmpfs) with a file beside it."""

    def __init__(self, epoch: int, directory: str) -> None:
        self.epoch, self.filler = epoch, Path(directory).parent / "filler"

    def on_epoch_begin(self, ctx):
        if ctx.rank != 0 or ctx.epoch != self.epoch:
            return
        fd = os.open(self.filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        try:
            for chunk in (1 << 16, 1 << 12, 1):
                _write_until_full(fd, b"\0" * chunk)
        finally:
            os.close(fd)


def _write_until_full(fd: int, chunk: bytes) -> None:
    try:
        while True:
            os.write(fd, chunk)
    except OSError as err:
        if err.errno != errno.ENOSPC:
            raise


def steps_per_epoch(num_samples: int, size: int, batch: int, samples_seen: int = 0) -> int:
    """The steps of an epoch sharded over ``size`` ranks (``batch`` samples each), after ``samples_seen``."""
    order = ShardedOrder(num_samples, 0, size, batch)
    order.set_epoch(0, samples_seen)
    return len(order)


def make_data(seed: int, n: int = 300):
    rng = np.random.RandomState(seed)
    x = rng.randn(n, 10).astype(np.float32)
    y = (x[:, :3].sum(1) > 0).astype(np.int64)
    return x, y


def worker_parser() -> argparse.ArgumentParser:
    """The flags both frameworks' training workers take; each adds its own."""
    p = argparse.ArgumentParser()
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--checkpoint-dir")
    p.add_argument("--every-n-steps", type=int)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--die-at-step", type=int)
    p.add_argument("--die-rank", type=int, default=1)
    p.add_argument("--stop-at-step", type=int, help="SIGSTOP rank --die-rank at this step")
    p.add_argument("--once-marker", help="die or stop only once in the whole job (elastic): the file records it")
    p.add_argument("--commit-every", type=int, help="elastic: commit every n optimizer steps")
    p.add_argument("--warmup-epochs", type=float, default=0.0)
    p.add_argument("--patience", type=int)
    p.add_argument("--nan-at-step", type=int)
    p.add_argument("--rank-metric", action="store_true")
    p.add_argument("--strict-world-size", action="store_true")
    p.add_argument("--rank1-hidden", type=int, help="rank 1 builds a hidden layer of this width (a shape mismatch)")
    p.add_argument("--rank1-extra-layer", action="store_true", help="rank 1 builds one more layer than rank 0")
    p.add_argument("--fsize-limit-at-epoch", type=int, help="rank 0's file writes fail from this epoch on")
    p.add_argument("--fill-disk-at-epoch", type=int, help="rank 0 fills the checkpoint file system at this epoch")
    p.add_argument("--expect-error", action="store_true", help="report an exception per rank instead of crashing")
    return p


def hidden_width(args: argparse.Namespace, rank: int, default: int = 16) -> int:
    """The hidden layer's width on this rank: ``--rank1-hidden`` makes rank 1 differ."""
    return args.rank1_hidden if rank == 1 and args.rank1_hidden else default


def run_reporting_errors(args: argparse.Namespace, backend: Any, train: Callable[[], None]) -> None:
    """Run ``train``; with ``--expect-error``, an exception is reported as this rank's result and exits 1.

    Every rank reports before any exits (a barrier), since launchers stop the job at the first failed rank.
    """
    if not args.expect_error:
        train()
        return
    try:
        train()
    except Exception as err:
        report({"rank": backend.rank, "error": f"{type(err).__name__}: {err}"})
        backend.barrier()
        sys.exit(1)


def probe_callbacks(args: argparse.Namespace) -> tuple[Recorder, list[Callback]]:
    """The recorder, and the probes that ``worker_parser``'s flags ask for."""
    recorder = Recorder()
    found: list[Callback] = [recorder]
    if args.rank_metric:
        found.append(RankMetric())
    if args.patience is not None:
        found.append(Plateau())
    if args.strict_world_size:
        found.append(ResumeFromCheckpoint(args.checkpoint_dir, on_world_size_change="error"))
    if args.die_at_step is not None:
        found.append(DieAtStep(args.die_at_step, args.die_rank, once_marker=args.once_marker))
    if args.stop_at_step is not None:
        found.append(DieAtStep(args.stop_at_step, args.die_rank, signal.SIGSTOP, args.once_marker))
    if args.fsize_limit_at_epoch is not None:
        found.append(LimitFileSize(args.fsize_limit_at_epoch))
    if args.fill_disk_at_epoch is not None:
        found.append(FillDisk(args.fill_disk_at_epoch, args.checkpoint_dir))
    return recorder, found
