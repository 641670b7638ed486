"""hvdtrain's callbacks inside Keras ``model.fit``: the ``KerasBridge`` callback and ``fit()``."""
from __future__ import annotations

import contextlib
import logging
import numbers
from collections.abc import Iterable
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from hvdtrain.callbacks import BroadcastInitialState, Callback, CallbackList, MetricAverage, default_callbacks
from hvdtrain.core.backend import Backend, allreduce_mean
from hvdtrain.core.context import TrainContext
from hvdtrain.core.options import TrainingOptions, accepts_options
from hvdtrain.core.progress import StepOutcome
from hvdtrain.tensorflow.adapter import TensorFlowAdapter
from hvdtrain.tensorflow.data import ShardedArrays, as_arrays, contiguous_shard, take
from hvdtrain.tensorflow.optimizer import is_distributed
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
    Resuming happens in ``on_train_begin``; Keras then starts at the resumed
    epoch. ``fit`` resumes at epoch granularity: a mid-epoch checkpoint
    restores the weights and repeats that epoch from its start.

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
            from hvdtrain.tensorflow.backend import HorovodBackend

            backend = HorovodBackend()
        callbacks = list(callbacks)
        if not any(isinstance(c, BroadcastInitialState) for c in callbacks):
            callbacks.append(BroadcastInitialState())
        if not any(isinstance(c, MetricAverage) for c in callbacks):
            callbacks.append(MetricAverage(weighted=data is not None))
        self.callbacks = CallbackList(callbacks)
        self.data = data
        self.validation_samples = validation_samples
        self.ctx = TrainContext(backend=backend, adapter=TensorFlowAdapter(backend))
        self._check_first_epoch = False
        self._moved_initial_epoch = False
        self._step_watch = contextlib.ExitStack()

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        ctx, model = self.ctx, self.model
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
        ctx.max_epochs = int(self.params.get("epochs") or 1)
        ctx.steps_per_epoch = self.params.get("steps")
        drive_keras_schedule(model.optimizer, self.callbacks)
        self.callbacks.on_train_begin(ctx)
        if ctx.progress.batches_done:
            log.warning("the checkpoint was written mid-epoch (batch %d); model.fit resumes at epoch granularity, "
                        "so epoch %d restarts from its first batch. Use the Trainer for exact mid-epoch resume.",
                        ctx.progress.batches_done, ctx.epoch + 1)
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
        ctx.progress.start_epoch(epoch)
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
        self._count_batches(ctx, last=batch)  # with steps_per_execution > 1, Keras reports several at once
        ctx.logs = dict(logs or {})
        optimizer = self.model.optimizer
        if is_distributed(optimizer):
            # Agreed inside the gradient allreduce; the bad update was skipped on every rank.
            ctx.outcome = StepOutcome(ctx.logs.get("loss"), ctx.outcome.updated, nonfinite_checked=True,
                                      nonfinite_rank=optimizer.pop_nonfinite_rank())
        self.callbacks.on_batch_end(ctx)
        if ctx.stop_training:
            self.model.stop_training = True

    def _count_batches(self, ctx: TrainContext, last: int) -> None:
        """Advance the progress through batch ``last`` of the epoch; one update every ``passes`` batches."""
        passes = getattr(self.model.optimizer, "backward_passes_per_step", 1)
        progress = ctx.progress
        while True:
            local, global_size = self.data.step_sizes[progress.batch] if self.data is not None else (0, 0)
            updated = (progress.micro_batches + 1) % passes == 0
            progress.finish_batch(global_size, updated)
            ctx.sample_count += local
            if progress.batch >= last:
                break
            progress.start_batch()
        ctx.outcome = StepOutcome(None, updated)

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

    def _average_validation(self, ctx: TrainContext) -> None:
        if self.validation_samples is None:
            return
        values = {k: v for k, v in ctx.logs.items() if k.startswith("val_")}
        ctx.logs.update(allreduce_mean(ctx.backend, values, weight=float(self.validation_samples)))

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        if self._moved_initial_epoch:
            self.model._initial_epoch = None
            self._moved_initial_epoch = False
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
    it already is. Resume restarts at the checkpoint's epoch.

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
    if backend is None:
        from hvdtrain.tensorflow.backend import HorovodBackend

        backend = HorovodBackend()
    _prepare_model(model, backend, o)
    hvd_callbacks = [c for c in callbacks if not isinstance(c, keras.callbacks.Callback)]
    keras_callbacks = [c for c in callbacks if isinstance(c, keras.callbacks.Callback)]
    train, steps, data = _training_input(model, x, y, backend, o.batch_size, shuffle, o.seed, steps_per_epoch)
    val, val_samples = _validation_input(validation_data, backend, o.batch_size)
    defaults = default_callbacks(o, has_val=validation_data is not None, weighted_metrics=data is not None)
    bridge = KerasBridge([*defaults, *hvd_callbacks], backend=backend, data=data, validation_samples=val_samples)
    if data is not None:
        train = data.dataset(first_epoch=lambda: bridge.ctx.epoch)
    if verbose is None:
        verbose = 0 if o.progress else "auto"
    try:
        return model.fit(train, epochs=o.epochs, steps_per_epoch=steps, validation_data=val,
                         shuffle=False, callbacks=[bridge, *keras_callbacks],
                         verbose=verbose if backend.rank == 0 else 0)
    except BaseException as error:
        bridge.on_exception(error)
        raise


def _prepare_model(model: keras.Model, backend: Backend, o: TrainingOptions) -> None:
    if getattr(model, "optimizer", None) is None:
        raise ValueError("compile the model first: model.compile(optimizer=..., loss=..., metrics=[...])")
    check_model_precision(model, o.precision)
    model.optimizer = with_loss_scaling(model.optimizer, o.precision)
    if not is_distributed(model.optimizer):
        distributed_optimizer(model.optimizer, backend, o)
        model.train_function = None  # a cached train step would bypass the allreduce


def _training_input(model: keras.Model, x: Any, y: Any, backend: Backend, batch_size: int, shuffle: bool,
                    seed: int, steps_per_epoch: int | None) -> tuple[Any, int, ShardedArrays | None]:
    """``(input, steps_per_epoch, ShardedArrays or None)``; arrays get their dataset later."""
    if isinstance(x, tf.data.Dataset):
        if y is not None:
            raise ValueError("with a tf.data.Dataset as x, the targets come from the dataset: pass y=None")
        return x.repeat(), _agreed_steps(x, backend, steps_per_epoch), None
    if y is None:
        raise ValueError("pass targets y with array inputs (or a tf.data.Dataset of (x, y) as x)")
    x = tuple(x) if isinstance(x, list) else x
    data = ShardedArrays((x, y), batch_size, backend.rank, backend.size, shuffle=shuffle, seed=seed)
    if not model.built:
        model(take(data.arrays[0], np.arange(1)))
    return None, data.steps_per_epoch, data


def _agreed_steps(dataset: tf.data.Dataset, backend: Backend, steps: int | None) -> int:
    if steps is None:
        count = int(dataset.cardinality())
        if count < 0:
            raise ValueError("the dataset's length is unknown: pass steps_per_epoch= (the same on every rank)")
        steps = count
    fewest = min(backend.allgather_object(int(steps)))
    if fewest < 1:
        raise ValueError("some rank's dataset has no batches; shard before batching and check the data size")
    return fewest


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
