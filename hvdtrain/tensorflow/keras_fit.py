"""hvdtrain's callbacks inside Keras ``model.fit``: the ``KerasBridge`` callback and ``fit()``."""
from __future__ import annotations

import logging
import numbers
import os
from collections.abc import Callable, Iterable
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from hvdtrain.callbacks import BroadcastInitialState, Callback, CallbackList, MetricAverage
from hvdtrain.callbacks.defaults import check_resume_target, default_callbacks
from hvdtrain.callbacks.early_stopping import NONFINITE_RANK
from hvdtrain.core.backend import Backend, allreduce_mean
from hvdtrain.core.context import TrainContext
from hvdtrain.tensorflow.adapter import TensorFlowAdapter
from hvdtrain.tensorflow.backend import HorovodBackend
from hvdtrain.tensorflow.data import ShardedArrays, as_arrays, contiguous_shard, take
from hvdtrain.tensorflow.optimizer import DistributedOptimizer, is_distributed

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
        backend = backend or HorovodBackend()
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
        self.callbacks.on_train_begin(ctx)
        if ctx.batch_index:
            log.warning("the checkpoint was written mid-epoch (batch %d); model.fit resumes at epoch granularity, "
                        "so epoch %d restarts from its first batch. Use the Trainer for exact mid-epoch resume.",
                        ctx.batch_index, ctx.epoch + 1)
            ctx.batch_index, ctx.samples_seen_in_epoch = 0, 0
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
        ctx.epoch, ctx.batch_index, ctx.samples_seen_in_epoch, ctx.sample_count = epoch, 0, 0, 0
        ctx.logs = {}
        self.callbacks.on_epoch_begin(ctx)

    def on_train_batch_begin(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        self.ctx.batch_index = batch
        self.callbacks.on_batch_begin(self.ctx)

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        ctx = self.ctx
        first = ctx.batch_index  # with steps_per_execution > 1, Keras reports several steps at once
        ctx.global_step += batch + 1 - first
        if self.data is not None:
            for local, global_size in self.data.step_sizes[first:batch + 1]:
                ctx.sample_count += local
                ctx.samples_seen_in_epoch += global_size
        ctx.logs = dict(logs or {})
        ctx.batch_index = batch
        if is_distributed(self.model.optimizer):
            # Agreed inside the gradient allreduce; the bad update was skipped on every rank.
            ctx.extras[NONFINITE_RANK] = self.model.optimizer.pop_nonfinite_rank()
        self.callbacks.on_batch_end(ctx)
        ctx.batch_index = batch + 1
        if ctx.stop_training:
            self.model.stop_training = True

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
        ctx.epoch, ctx.batch_index, ctx.samples_seen_in_epoch = epoch + 1, 0, 0

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
        if self._moved_initial_epoch:
            self.model._initial_epoch = None
        self.callbacks.on_exception(self.ctx, error)


def _is_scalar(value: Any) -> bool:
    return isinstance(value, numbers.Real) or (hasattr(value, "shape") and np.ndim(value) == 0)


def fit(model: keras.Model, x: Any, y: Any = None, *, batch_size: int = 32, epochs: int = 1,
        validation_data: Any = None, callbacks: Iterable[Any] = (), backend: Backend | None = None,
        seed: int = 0, shuffle: bool = True, steps_per_epoch: int | None = None, compression: str = "none",
        backward_passes_per_step: int = 1, op: str = "average", scale_lr: bool = True,
        warmup_epochs: float = 0.0, lr_schedule: Callable[[float], float] | None = None,
        checkpoint_dir: str | os.PathLike | None = None, keep_last: int = 2, keep_best: int = 1,
        monitor: str = "val_loss", resume: bool | str | os.PathLike = False,
        early_stopping_patience: int | None = None, log_dir: str | os.PathLike | None = None,
        progress: bool = True, verbose: Any = None) -> keras.callbacks.History:
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
        batch_size: samples per step on each rank.
        epochs: total epochs, as for ``model.fit``.
        validation_data: ``(x, y)`` arrays (sharded here, metrics averaged exactly) or a dataset.
        callbacks: hvdtrain callbacks and Keras callbacks, in any mix.
        backend: defaults to the Horovod backend (call ``init()`` first).
        seed, shuffle: data order, identical on all ranks.
        steps_per_epoch: for a dataset ``x`` of unknown length.
        compression, backward_passes_per_step, op, scale_lr: see ``DistributedOptimizer``.
        warmup_epochs, lr_schedule, checkpoint_dir, keep_last, keep_best, monitor, resume,
            early_stopping_patience, log_dir, progress: as for ``Trainer``.
        verbose: Keras' verbosity on rank 0 (default: 0 with ``progress``, else "auto"); 0 elsewhere.

    Returns:
        Keras' ``History`` (metrics averaged across ranks).
    """
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1 (got {epochs})")
    check_resume_target(resume, checkpoint_dir)
    backend = backend or HorovodBackend()
    _prepare_model(model, compression, backward_passes_per_step, op, scale_lr)
    hvd_callbacks = [c for c in callbacks if not isinstance(c, keras.callbacks.Callback)]
    keras_callbacks = [c for c in callbacks if isinstance(c, keras.callbacks.Callback)]
    train, steps, data = _training_input(model, x, y, backend, batch_size, shuffle, seed, steps_per_epoch)
    val, val_samples = _validation_input(validation_data, backend, batch_size)
    defaults = default_callbacks(
        warmup_epochs=warmup_epochs, lr_schedule=lr_schedule, checkpoint_dir=checkpoint_dir, keep_last=keep_last,
        keep_best=keep_best, monitor=monitor, resume=resume, patience=early_stopping_patience, log_dir=log_dir,
        progress=progress, has_val=validation_data is not None, weighted_metrics=data is not None)
    bridge = KerasBridge([*defaults, *hvd_callbacks], backend=backend, data=data, validation_samples=val_samples)
    if data is not None:
        train = data.dataset(first_epoch=lambda: bridge.ctx.epoch)
    if verbose is None:
        verbose = 0 if progress else "auto"
    try:
        return model.fit(train, epochs=epochs, steps_per_epoch=steps, validation_data=val,
                         shuffle=False, callbacks=[bridge, *keras_callbacks],
                         verbose=verbose if backend.rank == 0 else 0)
    except BaseException as error:
        bridge.on_exception(error)
        raise


def _prepare_model(model: keras.Model, compression: str, passes: int, op: str, scale_lr: bool) -> None:
    if getattr(model, "optimizer", None) is None:
        raise ValueError("compile the model first: model.compile(optimizer=..., loss=..., metrics=[...])")
    if not is_distributed(model.optimizer):
        DistributedOptimizer(model.optimizer, compression=compression, backward_passes_per_step=passes, op=op,
                             scale_lr=scale_lr)
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
