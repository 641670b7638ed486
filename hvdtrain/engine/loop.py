"""The epoch loop both Trainers share: hooks in order, agreed stops, and the one ``Progress`` it advances."""
from __future__ import annotations

from hvdtrain.callbacks.base import CallbackList
from hvdtrain.core.context import TrainContext
from hvdtrain.core.elastic import ElasticState
from hvdtrain.core.options import TrainingOptions
from hvdtrain.core.progress import StepOutcome


class EpochLoop:
    """``fit()`` for a Trainer; the framework adapter supplies the data position and the epoch's work.

    Subclasses set ``ctx``, ``callbacks``, ``options`` and ``accumulation`` and implement
    ``_position_data``, ``_train_epoch``, ``evaluate`` and, for elastic training,
    ``_model_specs`` and ``_after_elastic_load``. Inside ``_train_epoch`` each batch runs
    between ``_begin_batch`` and ``_end_batch``.

    Under elastic training the epochs run inside the backend's elastic loop: the state is
    committed in memory every ``commit_every_n_steps`` optimizer steps and at every epoch's end,
    and a lost or added worker rolls every rank back to the last commit, re-sharded.
    """

    ctx: TrainContext
    callbacks: CallbackList
    options: TrainingOptions
    accumulation: int = 1
    elastic_state: ElasticState | None = None

    def fit(self) -> list[dict[str, float]]:
        """Train until ``max_epochs`` or an agreed stop; returns the epoch logs."""
        ctx = self.ctx
        try:
            self.callbacks.on_train_begin(ctx)
            if ctx.elastic:
                self.elastic_state = ElasticState(ctx, self._model_specs, self._after_elastic_load,
                                                  self.options.commit_every_n_steps)
                ctx.backend.run_elastic(self._train_epochs, self.elastic_state)
            else:
                self._train_epochs()
            self.callbacks.on_train_end(ctx)
        except BaseException as error:
            self.callbacks.on_exception(ctx, error)
            raise
        return ctx.history

    def _train_epochs(self) -> None:
        ctx = self.ctx
        while ctx.epoch < ctx.max_epochs and not ctx.stop_training:
            self._run_epoch(ctx)
            if self.elastic_state and self.elastic_state.due_after_epoch():
                self.elastic_state.commit()

    def _run_epoch(self, ctx: TrainContext) -> None:
        steps_left = self._position_data(ctx.epoch, ctx.samples_seen_in_epoch)
        ctx.steps_per_epoch = None if steps_left is None else ctx.progress.batches_done + steps_left
        ctx.sample_count = 0
        ctx.logs = {}
        self.callbacks.on_epoch_begin(ctx)
        totals = self._train_epoch(ctx)
        if ctx.stop_training:  # agreed mid-epoch (e.g. a NaN loss): skip epoch-end hooks and checkpoints
            return
        ctx.logs = {**totals, **self.evaluate()}
        ctx.history.append(ctx.logs)
        self.callbacks.on_epoch_end(ctx)
        ctx.agree_on_stop()
        ctx.progress.next_epoch()

    def _gradient_weight(self, ctx: TrainContext, local_samples: int, global_size: int) -> float:
        """Loss weight of this rank's batch.

        Weighted by this rank's share, the averaged gradient is that of the combined batch even when
        a final batch splits unevenly; with gradient accumulation it is divided by the passes.
        """
        return local_samples * ctx.data_size / global_size / self.accumulation

    def _is_update_step(self, ctx: TrainContext) -> bool:
        """Whether this batch ends an accumulation round or the epoch: gradients are reduced and applied."""
        batch = ctx.progress.batch
        return (batch + 1) % self.accumulation == 0 or batch + 1 == ctx.steps_per_epoch

    def _begin_batch(self, ctx: TrainContext) -> None:
        ctx.progress.start_batch()
        self.callbacks.on_batch_begin(ctx)

    def _end_batch(self, ctx: TrainContext, local_samples: int, global_size: int, outcome: StepOutcome) -> bool:
        """Count the batch and run the batch-end hooks; True when training must stop."""
        ctx.count_batch(local_samples, global_size, outcome.updated)
        ctx.outcome = outcome
        ctx.logs = {"loss": outcome.loss}
        self.callbacks.on_batch_end(ctx)
        if self.elastic_state and self.elastic_state.due_after_batch():
            self.elastic_state.commit()
        return ctx.stop_training

    def _position_data(self, epoch: int, samples_seen: int) -> int | None:
        """Select ``epoch``'s order, skip ``samples_seen`` global samples; return the steps left (None: unknown)."""
        raise NotImplementedError

    def _train_epoch(self, ctx: TrainContext) -> dict[str, float]:
        """Run the epoch's remaining steps; return the training metrics averaged over this rank's samples."""
        raise NotImplementedError

    def evaluate(self) -> dict[str, float]:
        """Validation metrics (``val_`` prefixed), exact over all ranks; {} without validation data."""
        raise NotImplementedError

    def _model_specs(self) -> list[tuple[str, tuple[int, ...], str]]:
        """(name, shape, dtype) of the model's tensors, checked equal on every rank when they sync."""
        raise NotImplementedError

    def _after_elastic_load(self, old_size: int) -> None:
        """A commit made by ``old_size`` workers was loaded: drop partial gradients, shard for this world."""
        raise NotImplementedError
