"""A tqdm progress bar and an epoch summary line, on rank 0 only."""
from __future__ import annotations

import math
from typing import Any

from hvdtrain.callbacks.base import Callback, Order
from hvdtrain.core.context import TrainContext
from hvdtrain.core.distributed import rank_zero_only


class ProgressBar(Callback):
    """Shows one bar per epoch with the running loss, then the epoch's metrics.

    Args:
        refresh_every_n_steps: how often, in batches, to read the loss into the bar (a read from the
            device, so not every batch).
    """

    order = Order.LOGGING

    def __init__(self, refresh_every_n_steps: int = 10) -> None:
        self.refresh_every_n_steps = refresh_every_n_steps
        self._bar: Any | None = None

    @rank_zero_only
    def on_epoch_begin(self, ctx: TrainContext) -> None:
        from tqdm.auto import tqdm

        self._bar = tqdm(total=ctx.steps_per_epoch, initial=ctx.batch_index, unit="step", leave=False,
                         desc=f"epoch {ctx.epoch + 1}/{ctx.max_epochs}", dynamic_ncols=True)

    @rank_zero_only
    def on_batch_end(self, ctx: TrainContext) -> None:
        if self._bar is None:
            return
        self._bar.update(1)
        if ctx.progress.batches_run % self.refresh_every_n_steps == 0 and "loss" in ctx.logs:
            self._bar.set_postfix(loss=f"{float(ctx.logs['loss']):.4f}", refresh=False)

    @rank_zero_only
    def on_epoch_end(self, ctx: TrainContext) -> None:
        self._close_bar()
        metrics = "  ".join(f"{k}={_fmt(v)}" for k, v in sorted(ctx.logs.items()))
        print(f"epoch {ctx.epoch + 1}/{ctx.max_epochs}  {metrics}", flush=True)

    def on_exception(self, ctx: TrainContext, error: BaseException) -> None:
        self._close_bar()

    def on_world_change(self, ctx: TrainContext, old_size: int, new_size: int) -> None:
        self._close_bar()  # the epoch goes on from the last commit, under a new bar
        if ctx.is_root:
            print(f"workers: {old_size} -> {new_size}; going on from epoch {ctx.epoch + 1}, step {ctx.global_step} "
                  "(the last commit)", flush=True)

    def _close_bar(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def _fmt(value: Any) -> str:
    value = float(value)
    return f"{value:.4g}" if math.isfinite(value) and abs(value) < 1e4 else str(value)
