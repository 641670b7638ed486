"""hvdtrain's callbacks inside Keras ``model.fit``: the ``KerasBridge`` callback and ``fit()``."""
from __future__ import annotations

import contextlib
import logging
import numbers
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from hvdtrain.callbacks import BroadcastInitialState, Callback, CallbackList, MetricAverage, default_callbacks
from hvdtrain.core.backend import Backend, allreduce_mean
from hvdtrain.core.context import TrainContext
from hvdtrain.core.elastic import ElasticState
from hvdtrain.core.options import TrainingOptions, accepts_options
from hvdtrain.core.progress import Progress, StepOutcome
from hvdtrain.tensorflow.adapter import TensorFlowAdapter, state_variables, variable_specs
from hvdtrain.tensorflow.backend import default_backend
from hvdtrain.tensorflow.data import (
    ShardedArrays,
    agreed_dataset_steps,
    as_arrays,
    check_elastic_input,
    contiguous_shard,
    take,
)
from hvdtrain.tensorflow.optimizer import check_keras_options, is_distributed
from hvdtrain.tensorflow.precision import check_model_precision, with_loss_scaling
from hvdtrain.tensorflow.schedule import drive_keras_schedule
from hvdtrain.tensorflow.trainer import distributed_optimizer

log = logging.getLogger("hvdtrain")


class KerasBridge(keras.callbacks.Callback):
    """Runs an hvdtrain ``CallbackList`` inside ``model.fit``, with one ``TrainContext``.

    Keras hooks map to hvdtrain hooks (train, epoch and train-batch begin/end).
    Epoch metrics (``val_*`` included) are averaged across ranks and written
    back into Keras' logs, so Keras callbacks placed after the bridge (and the
    ``History``) see the averaged values. A non-finite loss on any rank is
    agreed inside the gradient allreduce, its update skipped on every rank,
    and training stops at that step. A stop agreed by the hvdtrain
    callbacks sets ``model.stop_training`` on every rank at the same step.
    A Keras ``LearningRateSchedule`` on the optimizer (wrapped by
    ``DistributedOptimizer``) is multiplied by hvdtrain's warmup and
    ``lr_schedule``, not replaced.

    Resuming happens in the train-begin hooks. In your own ``model.fit`` call
    they run in ``on_train_begin`` and Keras then starts at the resumed epoch,
    from its first batch: a mid-epoch checkpoint restores the weights and
    repeats that epoch. ``hvdtrain.tensorflow.fit`` resumes exactly instead:
    it runs the hooks first (``training``), then feeds the resumed epoch's
    remaining batches to a ``model.fit`` call of their own, whose batches
    continue the epoch's counters, and the later epochs to another. Under
    elastic training ``fit`` runs these calls inside the backend's elastic
    run and the bridge commits the state (``start_elastic``).

    Args:
        callbacks: hvdtrain callbacks. ``BroadcastInitialState`` and
            ``MetricAverage`` are added unless present.
        backend: defaults to the Horovod backend (call ``init()`` first).
        data: the ``ShardedArrays`` feeding ``fit``; gives exact sample counts
            (metrics weighted by samples, ``samples_seen_in_epoch``).
        validation_samples: this rank's number of validation samples, for
            an exact average of the ``val_`` metrics over uneven shards.
    """

    def __init__(self, callbacks: Iterable[Callback] = (), *, backend: Backend | None = None,
                 data: ShardedArrays | None = None, validation_samples: int | None = None) -> None:
        super().__init__()
        if backend is None:
            backend = default_backend()
        callbacks = list(callbacks)
        if not any(isinstance(c, BroadcastInitialState) for c in callbacks):
            callbacks.append(BroadcastInitialState())
        if not any(isinstance(c, MetricAverage) for c in callbacks):
            callbacks.append(MetricAverage(weighted=data is not None))
        self.callbacks = CallbackList(callbacks)
        self.data = data
        self.validation_samples = validation_samples
        self.ctx = TrainContext(backend=backend, adapter=TensorFlowAdapter(backend))
        self._held = False  # inside training(): the train begin and end hooks run there, once
        self._first_batch = 0  # batches of the epoch done before this model.fit call (a resumed epoch)
        self._step_sizes: list[tuple[int, int]] = []
        self._check_first_epoch = False
        self._moved_initial_epoch = False
        self._step_watch = contextlib.ExitStack()
        self.elastic_state: ElasticState | None = None

    @contextlib.contextmanager
    def training(self, model: keras.Model, epochs: int, steps_per_epoch: int | None = None) -> Iterator[TrainContext]:
        """One hvdtrain run over one or more ``model.fit`` calls (what ``fit`` uses).

        The train-begin hooks (resume, initial broadcast) run on entry, so the
        context says where training continues before ``model.fit`` is called;
        the train-end hooks run on exit, ``on_exception`` if anything raises.
        A resumed epoch continues at its checkpoint's batch: feed its remaining
        batches to a ``model.fit(..., initial_epoch=ctx.epoch, epochs=ctx.epoch + 1)``
        of their own (``steps_per_epoch``: the batches left), then the next epochs.
        """
        self.set_model(model)
        self._held = True
        try:
            self._begin_training(model, epochs, steps_per_epoch)
            yield self.ctx
            self.callbacks.on_train_end(self.ctx)
        except BaseException as error:
            self.on_exception(error)
            raise
        finally:
            self._held = False

    def start_elastic(self, commit_every_n_steps: int | None) -> ElasticState:
        """Elastic training (inside ``training``): the state committed at every epoch's end and every
        ``commit_every_n_steps`` optimizer steps, which a lost or added worker rolls every rank back to."""
        model = self.model
        self.elastic_state = ElasticState(self.ctx, lambda: variable_specs(state_variables(model, model.optimizer)),
                                          self._after_elastic_load, commit_every_n_steps)
        return self.elastic_state

    def _after_elastic_load(self, old_size: int) -> None:
        """A commit was loaded: forget the interrupted step; the train step is traced anew for this world."""
        self._step_watch.close()
        optimizer = self.model.optimizer
        if is_distributed(optimizer):
            optimizer.forget_noted_losses()
            optimizer.follow_world_size()
        self.model.train_function = None  # it read the rank and world size when traced

    def skip_epoch_end(self) -> None:
        """Go on to the next epoch: the resumed one has no batches left, so its end-of-epoch hooks are skipped."""
        log.warning("the checkpoint was written after the last batch of epoch %d, before its end: its "
                    "validation and end-of-epoch hooks are skipped; training continues at epoch %d",
                    self.ctx.epoch + 1, self.ctx.epoch + 2)
        self.ctx.progress.next_epoch()

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        if self._held:
            return
        self._begin_training(self.model, int(self.params.get("epochs") or 1), self.params.get("steps"))
        self._restart_resumed_epoch()

    def _begin_training(self, model: keras.Model, epochs: int, steps_per_epoch: int | None) -> None:
        ctx = self.ctx
        if ctx.size > 1 and not is_distributed(model.optimizer):
            raise RuntimeError("the model's optimizer does not average gradients across workers: compile with "
                               "optimizer=hvdtrain.tensorflow.DistributedOptimizer(...) or use "
                               "hvdtrain.tensorflow.fit")
        if ctx.size > 1 and model.jit_compile:
            # Keras turns XLA on by default where there is a GPU; Horovod's ops have no XLA kernels.
            log.info("turning off jit_compile: Horovod's allreduce cannot run inside an XLA cluster")
            model.jit_compile = False
            model.make_train_function(force=True)
        ctx.model, ctx.optimizer = model, model.optimizer
        ctx.max_epochs, ctx.steps_per_epoch = epochs, steps_per_epoch
        drive_keras_schedule(model.optimizer, self.callbacks)
        self.callbacks.on_train_begin(ctx)

    def _restart_resumed_epoch(self) -> None:
        """Your own ``model.fit`` starts at an epoch's first batch: make the resumed epoch start there."""
        ctx, model = self.ctx, self.model
        if ctx.progress.batches_done:
            log.warning("the checkpoint was written mid-epoch (batch %d); model.fit resumes at epoch granularity, "
                        "so epoch %d restarts from its first batch. hvdtrain.tensorflow.fit and the Trainer "
                        "resume mid-epoch exactly.", ctx.progress.batches_done, ctx.epoch + 1)
            ctx.progress.start_epoch(ctx.epoch)
        if ctx.resumed_from is not None:
            self._check_first_epoch = True
            if ctx.epoch and hasattr(model, "_initial_epoch"):
                # The attribute Keras' own BackupAndRestore sets: fit reads it right after on_train_begin.
                model._initial_epoch = ctx.epoch
                self._moved_initial_epoch = True

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        ctx = self.ctx
        if self._check_first_epoch and epoch != ctx.epoch:
            raise RuntimeError(f"training resumed at epoch {ctx.epoch} but model.fit started at epoch {epoch}; "
                               f"pass initial_epoch={ctx.epoch} to model.fit")
        self._check_first_epoch = False
        if epoch != ctx.epoch or not ctx.progress.batches_done:
            ctx.progress.start_epoch(epoch)  # else the resumed epoch continues after its checkpoint's batch
        self._first_batch = ctx.progress.batches_done
        steps = self.params.get("steps")
        ctx.steps_per_epoch = None if steps is None else self._first_batch + steps
        if self.data is not None:
            self.data.set_epoch(epoch, ctx.samples_seen_in_epoch)
            self._step_sizes = self.data.step_sizes
        ctx.sample_count = 0
        ctx.logs = {}
        self.callbacks.on_epoch_begin(ctx)

    def on_train_batch_begin(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        self.ctx.progress.start_batch()
        self.callbacks.on_batch_begin(self.ctx)
        # Keras runs the step, its gradient allreduce included, between these two hooks.
        self._step_watch.enter_context(self.ctx.backend.watch(
            f"training step {self.ctx.global_step + 1} (its gradient allreduce)"))

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        self._step_watch.close()
        ctx = self.ctx
        # With steps_per_execution > 1, Keras reports several batches at once; its count restarts every fit call.
        self._count_batches(ctx, last=self._first_batch + batch)
        ctx.logs = dict(logs or {})
        optimizer = self.model.optimizer
        if is_distributed(optimizer):
            # Agreed inside the gradient allreduce; the bad update was skipped on every rank.
            ctx.outcome = StepOutcome(ctx.logs.get("loss"), ctx.outcome.updated, nonfinite_checked=True,
                                      nonfinite_rank=optimizer.pop_nonfinite_rank())
        self.callbacks.on_batch_end(ctx)
        if ctx.stop_training:
            self.model.stop_training = True
        if self.elastic_state is not None and self.elastic_state.due_after_batch():
            self.elastic_state.commit()

    def _count_batches(self, ctx: TrainContext, last: int) -> None:
        """Advance the progress through batch ``last`` of the epoch; one update every ``passes`` batches."""
        passes = getattr(self.model.optimizer, "backward_passes_per_step", 1)
        progress = ctx.progress
        while True:
            local, global_size = self._step_size(progress.batch)
            updated = (progress.batches_run + 1) % passes == 0
            ctx.count_batch(local, global_size, updated)
            if progress.batch >= last:
                break
            progress.start_batch()
        ctx.outcome = StepOutcome(None, updated)

    def _step_size(self, batch: int) -> tuple[int, int]:
        """This rank's and all ranks' samples in the epoch's batch ``batch``; (0, 0) with no ``data``."""
        return self._step_sizes[batch - self._first_batch] if self.data is not None else (0, 0)

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        ctx = self.ctx
        if ctx.stop_training:  # agreed mid-epoch (e.g. a NaN loss): skip epoch-end hooks and checkpoints
            return
        logs = logs if logs is not None else {}
        ctx.logs = {k: float(v) for k, v in logs.items() if _is_scalar(v)}
        self._average_validation(ctx)
        ctx.history.append(ctx.logs)
        self.callbacks.on_epoch_end(ctx)
        logs.update(ctx.logs)
        if ctx.agree_on_stop():
            self.model.stop_training = True
        ctx.progress.next_epoch()
        if self.elastic_state is not None and self.elastic_state.due_after_epoch():
            self.elastic_state.commit()

    def _average_validation(self, ctx: TrainContext) -> None:
        if self.validation_samples is None:
            return
        values = {k: v for k, v in ctx.logs.items() if k.startswith("val_")}
        ctx.logs.update(allreduce_mean(ctx.backend, values, weight=float(self.validation_samples)))

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        if self._moved_initial_epoch:
            self.model._initial_epoch = None
            self._moved_initial_epoch = False
        if not self._held:
            self.callbacks.on_train_end(self.ctx)

    def on_exception(self, error: BaseException) -> None:
        """Tell the hvdtrain callbacks that ``model.fit`` raised (Keras has no such hook)."""
        self._step_watch.close()
        if self._moved_initial_epoch:
            self.model._initial_epoch = None
        self.callbacks.on_exception(self.ctx, error)


def _is_scalar(value: Any) -> bool:
    return isinstance(value, numbers.Real) or (hasattr(value, "shape") and np.ndim(value) == 0)


@accepts_options
def fit(model: keras.Model, x: Any, y: Any = None, *, validation_data: Any = None, callbacks: Iterable[Any] = (),
        backend: Backend | None = None, shuffle: bool = True, steps_per_epoch: int | None = None,
        verbose: Any = None, options: TrainingOptions | None = None, **overrides: Any) -> keras.callbacks.History:
    """``model.fit`` on every worker, with sharded data and hvdtrain's callbacks.

    Every rank passes the whole data set as arrays; each trains on its shard
    (``ShardedArrays``: every sample once per epoch, equal steps on all
    ranks). A ``tf.data.Dataset`` ``x`` is used as given: already sharded
    (``shard_dataset``) and batched; the ranks agree on ``steps_per_epoch``.
    The compiled optimizer is converted with ``DistributedOptimizer`` unless
    it already is; a Keras ``LearningRateSchedule`` on it is scaled by the
    world size, and ``warmup_epochs``/``lr_schedule`` multiply it.

    Resume continues where the checkpoint was written, mid-epoch too: the
    rest of that epoch runs as a ``model.fit`` call of its own (arrays: the
    epoch's remaining samples, re-sharded over this job's workers; a dataset:
    its batches after those already done), then the later epochs in another.
    Keras callbacks see two ``fit`` calls; the returned ``History`` joins them.
    Under elastic training (``hvdtrain run --elastic``) the data must be
    arrays, sharded anew for every world; the calls start again from the
    last commit whenever a worker is lost or joins.

    Args:
        model: a compiled Keras model.
        x, y: inputs and targets (arrays, tensors; ``x`` may be a tuple or dict), or a dataset as ``x``.
        validation_data: ``(x, y)`` arrays (sharded here, metrics averaged exactly) or a dataset.
        callbacks: hvdtrain callbacks and Keras callbacks, in any mix.
        backend: defaults to the Horovod backend (call ``init()`` first).
        shuffle: shuffle the data order every epoch (identically on all ranks).
        steps_per_epoch: for a dataset ``x`` of unknown length.
        verbose: Keras' verbosity on rank 0 (default: 0 with ``progress``, else "auto"); 0 elsewhere.
        options: the ``TrainingOptions`` (epochs, batch size, LR warmup, checkpoints, ...).
        **overrides: any ``TrainingOptions`` field, overriding ``options``.

    Returns:
        Keras' ``History`` (metrics averaged across ranks).
    """
    o = TrainingOptions.merged(options, overrides, "fit")
    check_keras_options(o)
    if backend is None:
        backend = default_backend()
    check_elastic_input(backend, x=x, validation_data=validation_data)
    _prepare_model(model, backend, o)
    hvd_callbacks = [c for c in callbacks if not isinstance(c, keras.callbacks.Callback)]
    keras_callbacks = [c for c in callbacks if isinstance(c, keras.callbacks.Callback)]
    train = _training_input(model, x, y, backend, o.batch_size, shuffle, o.seed, steps_per_epoch)
    val, val_samples = _validation_input(validation_data, backend, o.batch_size)
    defaults = default_callbacks(o, has_val=validation_data is not None, weighted_metrics=train.arrays is not None)
    bridge = KerasBridge([*defaults, *hvd_callbacks], backend=backend, data=train.arrays,
                         validation_samples=val_samples)
    bridge.ctx.scale_lr = o.scale_lr
    if verbose is None:
        verbose = 0 if o.progress else "auto"
    keras_args = {"shuffle": False, "callbacks": [bridge, *keras_callbacks], "verbose": verbose}
    with bridge.training(model, o.epochs, train.steps_per_epoch) as ctx:
        if not ctx.elastic:
            return _fit_calls(model, bridge, train, val, o.epochs, keras_args)

        def this_world() -> tuple[_ArrayInput, Any]:
            world_train = _training_input(model, x, y, backend, o.batch_size, shuffle, o.seed, None)
            world_val, bridge.validation_samples = _validation_input(validation_data, backend, o.batch_size)
            bridge.data = world_train.arrays
            return world_train, world_val

        return _fit_elastic(model, bridge, this_world, o, keras_args)


def _fit_calls(model: keras.Model, bridge: KerasBridge, train: _ArrayInput | _DatasetInput, val: Any, epochs: int,
               keras_args: dict[str, Any]) -> keras.callbacks.History:
    """``model.fit`` calls up to ``epochs`` or a stop: a resumed epoch's rest alone, then the later epochs."""
    ctx, history = bridge.ctx, None
    verbose = keras_args["verbose"] if ctx.rank == 0 else 0
    while history is None or (ctx.epoch < epochs and not model.stop_training):
        data, steps, first_epoch, last_epoch = _next_fit_call(train, bridge, epochs)
        part = model.fit(data, initial_epoch=first_epoch, epochs=last_epoch, steps_per_epoch=steps,
                         validation_data=val, **{**keras_args, "verbose": verbose})
        history = _joined(history, part)
    return history


def _fit_elastic(model: keras.Model, bridge: KerasBridge, this_world: Callable[[], tuple[_ArrayInput, Any]],
                 o: TrainingOptions, keras_args: dict[str, Any]) -> keras.callbacks.History:
    """``_fit_calls`` under the backend's elastic run: from the last commit, on the current world's shards."""
    ctx = bridge.ctx
    first_epoch: list[int] = []  # where training started, once the ranks first synced

    def from_last_commit() -> keras.callbacks.History:
        if not first_epoch:
            first_epoch.append(ctx.epoch)
        return _fit_calls(model, bridge, *this_world(), o.epochs, keras_args)

    history = ctx.backend.run_elastic(from_last_commit, bridge.start_elastic(o.commit_every_n_steps))
    return _history_since(history, ctx, first_epoch[0])


def _history_since(history: keras.callbacks.History, ctx: TrainContext, first_epoch: int) -> keras.callbacks.History:
    """The last ``model.fit``'s ``History``, holding the averaged logs of every epoch from ``first_epoch`` on."""
    history.epoch = list(range(first_epoch, len(ctx.history)))
    history.history = {}
    for logs in ctx.history[first_epoch:]:
        for name, value in logs.items():
            history.history.setdefault(name, []).append(value)
    return history


def _prepare_model(model: keras.Model, backend: Backend, o: TrainingOptions) -> None:
    if getattr(model, "optimizer", None) is None:
        raise ValueError("compile the model first: model.compile(optimizer=..., loss=..., metrics=[...])")
    check_model_precision(model, o.precision)
    model.optimizer = with_loss_scaling(model.optimizer, o.precision)
    if not is_distributed(model.optimizer):
        distributed_optimizer(model.optimizer, backend, o)
        model.train_function = None  # a cached train step would bypass the allreduce


class _ArrayInput:
    """Arrays for ``model.fit``: ``ShardedArrays``, whose epochs resume at any sample."""

    def __init__(self, arrays: ShardedArrays) -> None:
        self.arrays = arrays
        self.steps_per_epoch = arrays.steps_per_epoch

    def epochs_from(self, epoch: int) -> tf.data.Dataset:
        return self.arrays.dataset(epoch)

    def rest_of_epoch(self, epoch: int, progress: Progress) -> tuple[tf.data.Dataset, int]:
        """The batches of the epoch's permutation after its first ``samples_in_epoch`` samples, and their count."""
        self.arrays.set_epoch(epoch, progress.samples_in_epoch)
        return self.arrays.dataset(epoch, progress.samples_in_epoch, epochs=1), len(self.arrays)


class _DatasetInput:
    """A ``tf.data.Dataset`` of this rank's batches: ``steps_per_epoch`` batches per epoch, read as one stream.

    A resumed epoch reads the dataset anew, after the batches already done: exact when every epoch is one
    pass over the dataset (``steps_per_epoch`` batches) yielding the same order each time it is iterated.
    """

    arrays = None

    def __init__(self, dataset: tf.data.Dataset, steps_per_epoch: int) -> None:
        self.dataset = dataset
        self.steps_per_epoch = steps_per_epoch

    def epochs_from(self, epoch: int) -> tf.data.Dataset:
        return self.dataset.repeat()

    def rest_of_epoch(self, epoch: int, progress: Progress) -> tuple[tf.data.Dataset, int]:
        left = max(self.steps_per_epoch - progress.batches_done, 0)
        return self.dataset.skip(progress.batches_done).take(left), left


def _next_fit_call(train: _ArrayInput | _DatasetInput, bridge: KerasBridge,
                   epochs: int) -> tuple[tf.data.Dataset, int, int, int]:
    """``(input, steps_per_epoch, initial_epoch, epochs)`` of the next ``model.fit`` call.

    A resumed epoch's remaining batches go alone (their step count differs); then the epochs up to ``epochs``.
    """
    ctx = bridge.ctx
    if ctx.progress.batches_done and ctx.epoch < epochs:
        rest, steps = train.rest_of_epoch(ctx.epoch, ctx.progress)
        if steps:
            return rest, steps, ctx.epoch, ctx.epoch + 1
        bridge.skip_epoch_end()
    return train.epochs_from(ctx.epoch), train.steps_per_epoch, ctx.epoch, epochs


def _joined(history: keras.callbacks.History | None, more: keras.callbacks.History) -> keras.callbacks.History:
    """One ``History`` of consecutive ``model.fit`` calls."""
    if history is None:
        return more
    history.epoch += more.epoch
    for name, values in more.history.items():
        history.history.setdefault(name, []).extend(values)
    return history


def _training_input(model: keras.Model, x: Any, y: Any, backend: Backend, batch_size: int, shuffle: bool,
                    seed: int, steps_per_epoch: int | None) -> _ArrayInput | _DatasetInput:
    if isinstance(x, tf.data.Dataset):
        if y is not None:
            raise ValueError("with a tf.data.Dataset as x, the targets come from the dataset: pass y=None")
        return _DatasetInput(x, agreed_dataset_steps(x, backend, steps_per_epoch, name="x"))
    if y is None:
        raise ValueError("pass targets y with array inputs (or a tf.data.Dataset of (x, y) as x)")
    x = tuple(x) if isinstance(x, list) else x
    data = ShardedArrays((x, y), batch_size, backend.rank, backend.size, shuffle=shuffle, seed=seed)
    if not model.built:
        model(take(data.arrays[0], np.arange(1)))
    return _ArrayInput(data)


def _validation_input(validation_data: Any, backend: Backend, batch_size: int) -> tuple[Any, int | None]:
    if validation_data is None or isinstance(validation_data, tf.data.Dataset):
        return validation_data, None
    if not isinstance(validation_data, (tuple, list)) or len(validation_data) != 2:
        raise TypeError("validation_data must be (x, y) arrays or a tf.data.Dataset")
    x, y = validation_data
    shard, count = contiguous_shard((tuple(x) if isinstance(x, list) else x, y), backend.rank, backend.size)
    if count == 0:
        raise ValueError(f"the validation set has fewer samples than the {backend.size} workers")
    return tf.data.Dataset.from_tensor_slices(as_arrays(shard)).batch(batch_size), count
