"""Framework-agnostic callbacks and data the multi-process test workers share (PyTorch and TensorFlow)."""
from __future__ import annotations

import argparse
import os
import signal

import numpy as np

from hvdtrain.callbacks import Callback, Order, ResumeFromCheckpoint


class RankMetric(Callback):
    """Logs a metric whose value is the rank, before metric averaging runs."""

    order = Order.METRICS - 50

    def on_epoch_end(self, ctx):
        ctx.logs["rank_value"] = float(ctx.rank)


class Recorder(Callback):
    """Records what later callbacks would see: LR per batch, step counters, epoch logs."""

    order = Order.LEARNING_RATE + 1

    def __init__(self):
        self.lrs, self.epoch_logs, self.steps = [], [], []

    def on_batch_begin(self, ctx):
        self.lrs.append(ctx.adapter.get_learning_rates(ctx.optimizer)[0])

    def on_batch_end(self, ctx):
        self.steps.append([ctx.epoch, ctx.batch_index, ctx.global_step, ctx.samples_seen_in_epoch])

    def on_epoch_end(self, ctx):
        self.epoch_logs.append({k: float(v) for k, v in ctx.logs.items()})


class DieAtStep(Callback):
    """SIGKILLs this process at a global step (a crash that leaves no chance to clean up)."""

    def __init__(self, step, rank):
        self.step, self.rank = step, rank

    def on_batch_end(self, ctx):
        if ctx.global_step == self.step and ctx.rank == self.rank:
            os.kill(os.getpid(), signal.SIGKILL)


class Plateau(Callback):
    """Logs a metric that never improves after epoch 1."""

    order = Order.METRICS - 50

    def on_epoch_end(self, ctx):
        ctx.logs["plateau"] = 1.0 if ctx.epoch == 0 else 2.0


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
    p.add_argument("--warmup-epochs", type=float, default=0.0)
    p.add_argument("--patience", type=int)
    p.add_argument("--nan-at-step", type=int)
    p.add_argument("--rank-metric", action="store_true")
    p.add_argument("--strict-world-size", action="store_true")
    return p


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
        found.append(DieAtStep(args.die_at_step, args.die_rank))
    return recorder, found
