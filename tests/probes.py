"""Framework-agnostic callbacks and data the multi-process test workers share (PyTorch and TensorFlow)."""
from __future__ import annotations

import os
import signal

import numpy as np

from hvdtrain.callbacks import Callback, Order


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
