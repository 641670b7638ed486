"""The epoch loop both Trainers share: hooks in order, agreed stops, and the counters resume needs."""
from __future__ import annotations

from hvdtrain.callbacks.base import CallbackList
from hvdtrain.core.context import TrainContext


class EpochLoop:
    """``fit()`` for a Trainer; the framework adapter supplies the data position and the epoch's work.

    Subclasses set ``ctx``, ``callbacks`` and ``max_epochs`` and implement
    ``_position_data``, ``_train_epoch`` and ``evaluate``.
    """

    ctx: TrainContext
    callbacks: CallbackList
    max_epochs: int

    def fit(self) -> list[dict[str, float]]:
        """Train until ``max_epochs`` or an agreed stop; returns the epoch logs."""
        ctx = self.ctx
        try:
            self.callbacks.on_train_begin(ctx)
            while ctx.epoch < self.max_epochs and not ctx.stop_training:
                self._run_epoch(ctx)
            self.callbacks.on_train_end(ctx)
        except BaseException as error:
            self.callbacks.on_exception(ctx, error)
            raise
        return ctx.history

    def _run_epoch(self, ctx: TrainContext) -> None:
        steps_left = self._position_data(ctx.epoch, ctx.samples_seen_in_epoch)
        ctx.steps_per_epoch = ctx.batch_index + steps_left
        ctx.logs = {}
        self.callbacks.on_epoch_begin(ctx)
        totals = self._train_epoch(ctx)
        if ctx.stop_training:  # agreed mid-epoch (e.g. a NaN loss): skip epoch-end hooks and checkpoints
            return
        ctx.logs = {**totals, **self.evaluate()}
        ctx.history.append(ctx.logs)
        self.callbacks.on_epoch_end(ctx)
        ctx.agree_on_stop()
        ctx.epoch, ctx.batch_index, ctx.samples_seen_in_epoch = ctx.epoch + 1, 0, 0

    def _position_data(self, epoch: int, samples_seen: int) -> int:
        """Select ``epoch``'s order, skip ``samples_seen`` global samples; return the steps left."""
        raise NotImplementedError

    def _train_epoch(self, ctx: TrainContext) -> dict[str, float]:
        """Run the epoch's remaining steps; return the training metrics averaged over this rank's samples."""
        raise NotImplementedError

    def evaluate(self) -> dict[str, float]:
        """Validation metrics (``val_`` prefixed), exact over all ranks; {} without validation data."""
        raise NotImplementedError
