"""A ``torch.optim.lr_scheduler`` driven by the Trainer, with hvdtrain's LR scaling composed on top."""
from __future__ import annotations

import warnings
from typing import Any

INTERVALS = ("step", "epoch")


class SchedulerDriver:
    """Steps a torch LR scheduler and hands its LRs to ``LearningRateSchedule`` as the base LRs.

    The scheduler computes single-worker LRs; the LR callback sets ``rates() * warmup * multiplier``
    on the optimizer every batch, so the world-size scaling and the warmup are composed on top of the
    scheduler instead of overwriting it. Its state is checkpointed (the Trainer registers it with the
    adapter), so a resumed run continues the schedule exactly.

    Args:
        scheduler: the user's scheduler, built on the optimizer with single-worker LRs.
        optimizer: the distributed optimizer (it shares its parameter groups with the scheduler's).
        interval: "step" (after every optimizer step) or "epoch" (after every epoch).
        scale: the world-size factor of the linear scaling rule (1 without it).
    """

    def __init__(self, scheduler: Any, optimizer: Any, interval: str, scale: float) -> None:
        if interval not in INTERVALS:
            raise ValueError(f"lr_scheduler_interval must be one of {list(INTERVALS)} (got {interval!r})")
        if not callable(getattr(scheduler, "get_last_lr", None)):
            raise TypeError(f"lr_scheduler must be a torch.optim.lr_scheduler.LRScheduler (got "
                            f"{type(scheduler).__name__}); ReduceLROnPlateau needs a metric and is not driven")
        # Horovod's optimizer is a new object over the same groups, and loading a checkpoint replaces its
        # groups: the scheduler must write its LRs and momenta to that optimizer's groups.
        scheduler.optimizer = optimizer
        self.scheduler = scheduler
        self.optimizer = optimizer
        self.interval = interval
        self.scale = scale

    def rates(self) -> list[float]:
        """The scheduler's current LRs times the world-size factor."""
        return [float(lr) * self.scale for lr in self.scheduler.get_last_lr()]

    def step(self) -> None:
        """Advance the schedule by one step (or epoch)."""
        # Chainable schedulers read the group LRs: give them back their own values first.
        for group, lr in zip(self.optimizer.param_groups, self.scheduler.get_last_lr()):
            group["lr"] = lr
        with warnings.catch_warnings():  # the scheduler tracks its own optimizer object, not Horovod's wrapper
            warnings.filterwarnings("ignore", message=r".*lr_scheduler\.step\(\)", category=UserWarning)
            self.scheduler.step()

    def state_dict(self) -> dict[str, Any]:
        return self.scheduler.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.scheduler.load_state_dict(state)
