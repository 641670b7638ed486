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
    accumulation: int = 1

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

    def _set_accumulation(self, backward_passes_per_step: int, checkpoint_every_n_steps: int | None) -> None:
        """Record the optimizer's passes per update; mid-epoch checkpoints must fall on an update."""
        if checkpoint_every_n_steps and checkpoint_every_n_steps % backward_passes_per_step:
            raise ValueError(f"checkpoint_every_n_steps={checkpoint_every_n_steps} must be a multiple of "
                             f"backward_passes_per_step={backward_passes_per_step}, or a checkpoint would drop "
                             "accumulated gradients")
        self.accumulation = backward_passes_per_step

    def _gradient_weight(self, ctx: TrainContext, local_samples: int, global_size: int) -> float:
        """Loss weight of this rank's batch.

        Weighted by this rank's share, the averaged gradient is that of the combined batch even when
        a final batch splits unevenly; with gradient accumulation it is divided by the passes.
        """
        return local_samples * ctx.size / global_size / self.accumulation

    def _is_update_step(self, ctx: TrainContext) -> bool:
        """Whether this batch ends an accumulation round or the epoch: gradients are reduced and applied."""
        return (ctx.batch_index + 1) % self.accumulation == 0 or ctx.batch_index + 1 == ctx.steps_per_epoch

    def _end_batch(self, ctx: TrainContext, local_samples: int, global_size: int, loss: object) -> bool:
        """Count the batch and run the batch-end hooks; True when training must stop."""
        ctx.sample_count += local_samples
        ctx.global_step += 1
        ctx.samples_seen_in_epoch += global_size
        ctx.logs = {"loss": loss}
        self.callbacks.on_batch_end(ctx)
        ctx.batch_index += 1
        return ctx.stop_training

    def _position_data(self, epoch: int, samples_seen: int) -> int:
        """Select ``epoch``'s order, skip ``samples_seen`` global samples; return the steps left."""
        raise NotImplementedError

    def _train_epoch(self, ctx: TrainContext) -> dict[str, float]:
        """Run the epoch's remaining steps; return the training metrics averaged over this rank's samples."""
        raise NotImplementedError

    def evaluate(self) -> dict[str, float]:
        """Validation metrics (``val_`` prefixed), exact over all ranks; {} without validation data."""
        raise NotImplementedError
