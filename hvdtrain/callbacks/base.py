"""The callback protocol and the ordered list that runs it."""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from hvdtrain.core.context import TrainContext

HOOKS = ("on_train_begin", "on_epoch_begin", "on_batch_begin", "on_batch_end",
         "on_epoch_end", "on_train_end", "on_exception")


class Order:
    """Where built-in callbacks run; lower runs first, user callbacks default to ``USER``."""

    RESUME = -100          # load a checkpoint before anything reads state
    BROADCAST = 0          # then make every rank equal to rank 0
    LEARNING_RATE = 10     # set the LR before the batch runs
    METRICS = 100          # average metrics before anything reads them
    GUARDS = 150           # stop on NaN/inf losses
    USER = 200
    EARLY_STOPPING = 300
    LOGGING = 400          # progress, CSV, TensorBoard see final metrics
    CHECKPOINT = 900       # save last, after every decision of the step/epoch


class Callback:
    """Base class for callbacks. Every hook receives the one ``TrainContext``.

    Hooks run on every rank, in ascending ``order``. Work that must happen on
    rank 0 only is declared with ``@rank_zero_only`` on the hook; any decision
    that changes which collectives run (stopping, saving) must be agreed across
    ranks (see ``TrainContext.agree_on_stop``).

    A callback with state to resume implements ``state_dict``/``load_state_dict``.
    """

    order: int = Order.USER

    def on_train_begin(self, ctx: TrainContext) -> None: ...

    def on_epoch_begin(self, ctx: TrainContext) -> None: ...

    def on_batch_begin(self, ctx: TrainContext) -> None: ...

    def on_batch_end(self, ctx: TrainContext) -> None: ...

    def on_epoch_end(self, ctx: TrainContext) -> None: ...

    def on_train_end(self, ctx: TrainContext) -> None: ...

    def on_exception(self, ctx: TrainContext, error: BaseException) -> None: ...

    def on_world_change(self, ctx: TrainContext, old_size: int, new_size: int) -> None:
        """Elastic training lost or gained workers; the state is rank 0's last commit, re-sharded."""

    def state_dict(self) -> dict[str, Any] | None:
        """State to save in checkpoints, or None when there is none."""
        return None

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what ``state_dict`` returned."""


class CallbackList(Callback):
    """Runs callbacks in ascending ``order`` (stable for equal orders). It is itself a Callback."""

    def __init__(self, callbacks: Iterable[Callback] = ()) -> None:
        self.callbacks: list[Callback] = []
        for callback in callbacks:
            self.add(callback)

    def add(self, callback: Callback) -> None:
        missing = [h for h in HOOKS if not callable(getattr(callback, h, None))]
        if missing:
            raise TypeError(f"{type(callback).__name__} is not a callback: it lacks {', '.join(missing)}; "
                            "subclass hvdtrain.Callback")
        self.callbacks.append(callback)
        self.callbacks.sort(key=lambda c: getattr(c, "order", Order.USER))
        self._batch_begin = self._overriding("on_batch_begin")
        self._batch_end = self._overriding("on_batch_end")

    def _overriding(self, hook: str) -> list[Any]:
        # Per-batch hooks are hot: call only the callbacks that implement them.
        return [getattr(c, hook) for c in self.callbacks
                if getattr(type(c), hook, None) is not getattr(Callback, hook)]

    def find(self, kind: type) -> list[Callback]:
        return [c for c in self.callbacks if isinstance(c, kind)]

    def __iter__(self):
        return iter(self.callbacks)

    def on_train_begin(self, ctx: TrainContext) -> None:
        ctx.callbacks = self
        for c in self.callbacks:
            c.on_train_begin(ctx)

    def on_epoch_begin(self, ctx: TrainContext) -> None:
        for c in self.callbacks:
            c.on_epoch_begin(ctx)

    def on_batch_begin(self, ctx: TrainContext) -> None:
        for hook in self._batch_begin:
            hook(ctx)

    def on_batch_end(self, ctx: TrainContext) -> None:
        for hook in self._batch_end:
            hook(ctx)

    def on_epoch_end(self, ctx: TrainContext) -> None:
        for c in self.callbacks:
            c.on_epoch_end(ctx)

    def on_train_end(self, ctx: TrainContext) -> None:
        for c in self.callbacks:
            c.on_train_end(ctx)

    def on_exception(self, ctx: TrainContext, error: BaseException) -> None:
        for c in self.callbacks:
            c.on_exception(ctx, error)

    def on_world_change(self, ctx: TrainContext, old_size: int, new_size: int) -> None:
        for c in self.callbacks:
            hook = getattr(c, "on_world_change", None)  # optional for callbacks written before it
            if hook:
                hook(ctx, old_size, new_size)

    def state_dict(self) -> dict[str, Any]:
        """States of the stateful callbacks, keyed by class name and position."""
        states = {}
        for key, callback in self._keyed():
            state = callback.state_dict()
            if state is not None:
                states[key] = state
        return states

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key, callback in self._keyed():
            if key in state:
                callback.load_state_dict(state[key])

    def _keyed(self) -> list[tuple[str, Callback]]:
        counts: dict[str, int] = {}
        keyed = []
        for callback in self.callbacks:
            name = type(callback).__name__
            keyed.append((f"{name}:{counts.get(name, 0)}", callback))
            counts[name] = counts.get(name, 0) + 1
        return keyed
