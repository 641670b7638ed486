"""Stop when a monitored metric stops improving, or when the loss is not finite."""
from __future__ import annotations

import math
from typing import Any

from hvdtrain.callbacks.base import Callback, Order
from hvdtrain.callbacks.monitor import Monitor
from hvdtrain.core.context import TrainContext


class EarlyStopping(Callback):
    """Requests a stop after ``patience`` epochs without improvement.

    Reads metrics after ``MetricAverage``, so every rank sees the same values
    and reaches the same decision; the loop still agrees on it across ranks.

    Args:
        monitor: metric to watch.
        mode: "min", "max" or "auto".
        patience: epochs without improvement to tolerate.
        min_delta: smallest change that counts as improvement.
    """

    order = Order.EARLY_STOPPING

    def __init__(self, monitor: str = "val_loss", mode: str = "auto", patience: int = 5,
                 min_delta: float = 0.0) -> None:
        self.monitor = Monitor(monitor, mode, min_delta)
        self.patience = patience
        self.wait = 0

    def on_epoch_end(self, ctx: TrainContext) -> None:
        if self.monitor.update(self.monitor.read(ctx.logs)):
            self.wait = 0
            return
        self.wait += 1
        if self.wait >= self.patience:
            ctx.request_stop(f"early stopping: {self.monitor.metric} did not improve for "
                             f"{self.wait} epochs (best {self.monitor.best:.6g})")

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.monitor.best, "wait": self.wait}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.monitor.best = state["best"]
        self.wait = state["wait"]


class StopOnNonFinite(Callback):
    """Stops every rank as soon as any rank's loss is NaN or infinite.

    It agrees across ranks every ``check_every_n_steps`` optimizer steps (one tiny
    collective; batches that only accumulate gradients are not read), so all ranks
    leave the loop at the same step. hvdtrain's
    Trainers and ``fit`` agree inside the gradient allreduce instead, at no
    extra cost (``ctx.outcome.nonfinite_checked``), and skip the offending
    step so the weights stay finite.
    """

    order = Order.GUARDS

    def __init__(self, monitor: str = "loss", check_every_n_steps: int = 1) -> None:
        if check_every_n_steps < 1:
            raise ValueError(f"check_every_n_steps must be >= 1 (got {check_every_n_steps})")
        self.metric = monitor
        self.check_every_n_steps = check_every_n_steps
        self._bad = False

    def on_batch_end(self, ctx: TrainContext) -> None:
        if not ctx.outcome.updated:  # mid accumulation round: the step's own check covers its batches
            return
        if self.metric == "loss" and ctx.outcome.nonfinite_checked:
            bad_rank = ctx.outcome.nonfinite_rank
            if bad_rank is not None:
                ctx.stop_agreed(f"non-finite loss on rank {bad_rank} at step {ctx.global_step}; "
                                "that step was not applied")
            return
        value = ctx.logs.get(self.metric)
        if value is not None and not math.isfinite(float(value)):
            if not self._bad:
                ctx.request_stop(f"non-finite {self.metric} ({float(value)}) on rank {ctx.rank} "
                                 f"at step {ctx.global_step}")
            self._bad = True
        if ctx.global_step % self.check_every_n_steps == 0:
            ctx.agree_on_stop()
