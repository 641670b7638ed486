"""Average epoch metrics across ranks before anything reads them."""
from __future__ import annotations

import numbers
from collections.abc import Iterable

from hvdtrain.callbacks.base import Callback, Order
from hvdtrain.core.backend import allreduce_mean
from hvdtrain.core.context import TrainContext


class MetricAverage(Callback):
    """Replaces each numeric epoch metric by its mean over ranks (one collective).

    Args:
        weighted: weight each rank by ``ctx.sample_count`` (its samples this epoch).
        exclude: metric names to leave untouched (already global).
    """

    order = Order.METRICS

    def __init__(self, weighted: bool = False, exclude: Iterable[str] | None = None) -> None:
        self.weighted = weighted
        self.exclude = set(exclude or ())

    def on_epoch_end(self, ctx: TrainContext) -> None:
        local = {k: float(v) for k, v in ctx.logs.items()
                 if k not in self.exclude and isinstance(v, numbers.Real)}
        # Every rank must average the same keys, or the collective's shapes differ.
        keys = ctx.backend.broadcast_object(sorted(local))
        if sorted(local) != keys:
            raise RuntimeError(f"rank {ctx.rank} logged metrics {sorted(local)} but rank 0 logged {keys}; "
                               "every rank must log the same metric names")
        weight = float(ctx.sample_count) if self.weighted else 1.0
        ctx.logs.update(allreduce_mean(ctx.backend, local, weight=weight))
