"""The hvdtrain callback that times the benchmark windows inside hvdtrain's training loops."""
from __future__ import annotations

from typing import Any

from benchmarks.common import WindowTimer


def timing_callback(timer: WindowTimer) -> Any:
    """An hvdtrain user callback that ticks ``timer`` after every step and stops when it is done.

    It also records the rank, the world size and the first and last loss.
    """
    from hvdtrain.callbacks import Callback

    class StepTimer(Callback):
        def __init__(self) -> None:
            self.rank, self.size = 0, 1
            self.losses: list[float] = []

        def on_train_begin(self, ctx: Any) -> None:
            self.rank, self.size = ctx.rank, ctx.size
            timer.begin()

        def on_batch_end(self, ctx: Any) -> None:
            if timer.step == 0 or timer.step + 1 == timer.total_steps:
                self.losses.append(float(ctx.logs.get("loss", float("nan"))))
            if timer.tick():
                # Every rank reaches this step count at the same step: an agreed stop, effective now.
                getattr(ctx, "stop_agreed", ctx.request_stop)("benchmark finished")

    return StepTimer()
