"""Learning-rate warmup (Goyal et al., 2017) and schedules, set per batch."""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

from hvdtrain.callbacks.base import Callback, Order
from hvdtrain.core.context import TrainContext

Multiplier = Callable[[float], float]


class LearningRateSchedule(Callback):
    """Sets each parameter group's LR to ``base_lr * warmup(e) * multiplier(e)``.

    ``e`` is the fractional epoch (``epoch + batch / steps_per_epoch``). The
    base LRs are the optimizer's LRs when training starts, which hvdtrain's
    optimizers have already scaled by the world size. During warmup the LR
    ramps linearly from ``base_lr / size`` (the single-worker LR) to ``base_lr``,
    which avoids the early instability of large global batches.

    Args:
        multiplier: function of the fractional epoch; None means constant 1.
        warmup_epochs: length of the linear warmup (0 disables it).
        warmup_start_factor: starting fraction of base_lr; defaults to ``1 / size``.
        base_rates: where the base LRs come from each batch, e.g. a framework LR scheduler (already
            scaled by the world size); None takes them from the optimizer when training starts.
        apply_factor: where the factor goes instead of the optimizer's LRs: a framework schedule
            that multiplies it into its own rates (a Keras ``LearningRateSchedule``).
    """

    order = Order.LEARNING_RATE

    def __init__(self, multiplier: Multiplier | None = None, warmup_epochs: float = 0.0,
                 warmup_start_factor: float | None = None,
                 base_rates: Callable[[], list[float]] | None = None,
                 apply_factor: Callable[[float], None] | None = None) -> None:
        if warmup_epochs < 0:
            raise ValueError(f"warmup_epochs must be >= 0 (got {warmup_epochs})")
        self.multiplier = multiplier
        self.warmup_epochs = warmup_epochs
        self.warmup_start_factor = warmup_start_factor
        self.base_lrs: list[float] | None = None
        self.base_rates = base_rates
        self.apply_factor = apply_factor
        self._last_factor: float | None = None

    def on_train_begin(self, ctx: TrainContext) -> None:
        if self.base_lrs is None:  # not restored from a checkpoint
            self.base_lrs = ctx.adapter.get_learning_rates(ctx.optimizer)
        self._last_factor = None

    def factor(self, epoch: float, size: int) -> float:
        """The multiplier applied to the base LRs at fractional ``epoch``."""
        value = self.multiplier(epoch) if self.multiplier else 1.0
        if epoch < self.warmup_epochs:
            start = self.warmup_start_factor if self.warmup_start_factor is not None else 1.0 / size
            value *= start + (1.0 - start) * epoch / self.warmup_epochs
        return value

    def on_batch_begin(self, ctx: TrainContext) -> None:
        steps = ctx.steps_per_epoch  # unknown for streamed input: the epoch's start counts
        factor = self.factor(ctx.epoch + (min(ctx.batch_index, steps) / steps if steps else 0.0), ctx.data_size)
        if self.base_rates is not None:  # the scheduler may have moved: set every batch
            ctx.adapter.set_learning_rates(ctx.optimizer, [lr * factor for lr in self.base_rates()])
        elif factor != self._last_factor:
            if self.apply_factor is not None:
                self.apply_factor(factor)
            else:
                ctx.adapter.set_learning_rates(ctx.optimizer, [lr * factor for lr in self.base_lrs])
            self._last_factor = factor

    def on_epoch_end(self, ctx: TrainContext) -> None:
        ctx.logs["lr"] = ctx.adapter.get_learning_rates(ctx.optimizer)[0]

    def state_dict(self) -> dict[str, Any]:
        return {"base_lrs": self.base_lrs}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.base_lrs = state["base_lrs"]

    def rescale_for_world_size(self, old_size: int, new_size: int) -> None:
        """Keep the linear-scaling rule when resuming on a different number of workers."""
        if self.base_lrs is not None:
            self.base_lrs = [lr * new_size / old_size for lr in self.base_lrs]


class LearningRateWarmup(LearningRateSchedule):
    """Linear warmup from the single-worker LR to the scaled LR, then constant."""

    def __init__(self, warmup_epochs: float = 5.0, start_factor: float | None = None) -> None:
        super().__init__(None, warmup_epochs, start_factor)


def step_decay(boundaries: Sequence[float], factor: float = 0.1) -> Multiplier:
    """Multiply by ``factor`` at each epoch boundary passed."""
    return lambda epoch: factor ** sum(epoch >= b for b in boundaries)


def cosine_decay(total_epochs: float, final_factor: float = 0.0) -> Multiplier:
    """Cosine decay from 1 to ``final_factor`` over ``total_epochs``."""
    def multiplier(epoch: float) -> float:
        progress = min(epoch / total_epochs, 1.0)
        return final_factor + (1 - final_factor) * 0.5 * (1 + math.cos(math.pi * progress))
    return multiplier
