"""A custom-loop Trainer for Keras 3 models: sharded arrays, distributed optimizer, callbacks."""
from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from hvdtrain.callbacks import Callback, CallbackList
from hvdtrain.callbacks.defaults import check_resume_target, default_callbacks
from hvdtrain.callbacks.early_stopping import NONFINITE_RANK
from hvdtrain.core.backend import Backend
from hvdtrain.core.context import TrainContext
from hvdtrain.core.loop import EpochLoop
from hvdtrain.core.sharding import ShardedOrder
from hvdtrain.tensorflow.adapter import TensorFlowAdapter, build_optimizer
from hvdtrain.tensorflow.backend import HorovodBackend
from hvdtrain.tensorflow.data import ShardedArrays, as_arrays, batch_signature, num_samples, take
from hvdtrain.tensorflow.optimizer import DistributedOptimizer, is_distributed
from hvdtrain.tensorflow.step import LossFn, TrainerSteps


def accuracy(y_true: Any, y_pred: Any) -> tf.Tensor:
    """Fraction of rows whose arg-max (over logits or probabilities) matches the integer label."""
    predicted = tf.argmax(y_pred, axis=-1, output_type=tf.int64)
    return tf.reduce_mean(tf.cast(tf.equal(predicted, tf.cast(tf.reshape(y_true, [-1]), tf.int64)), tf.float32))


class Trainer(EpochLoop):
    """Data-parallel training of a Keras 3 model in a custom ``tf.GradientTape`` loop.

    The same arguments, callbacks and checkpoints as ``hvdtrain.torch.Trainer``;
    losses and metrics follow the Keras convention ``fn(y_true, y_pred)``.
    Epochs resume exactly, even mid-epoch (from ``checkpoint_every_n_steps``).

    Args:
        model: a built Keras model (give it a ``keras.Input``); every rank builds it the same way.
        optimizer: a Keras optimizer (converted with ``DistributedOptimizer`` for you) or an
            already distributed one.
        loss_fn: ``loss_fn(y_true, y_pred)`` returning the batch mean (e.g. a ``keras.losses.Loss``).
        train_data: ``(x, y)``: NumPy arrays or tensors (``x`` may be a tuple or dict of them).
        val_data: optional ``(x, y)``, evaluated exactly over all ranks every epoch.
        batch_size: samples per step on each rank.
        max_epochs: epochs to train.
        metrics: ``{name: fn(y_true, y_pred) -> batch mean}``; ``val_`` versions are logged too.
        callbacks: user callbacks, merged with the defaults by ``order``.
        backend: defaults to the Horovod backend (call ``hvdtrain.tensorflow.init()`` first).
        seed: seed of the data order (identical on all ranks).
        grad_clip_norm: clip the averaged gradients to this global norm.
        compression, backward_passes_per_step, op, scale_lr: see ``DistributedOptimizer``.
        warmup_epochs: linear LR warmup length (Goyal et al.); 0 disables.
        lr_schedule: multiplier of the base LR as a function of the fractional epoch.
        checkpoint_dir: save checkpoints here (rank 0).
        checkpoint_every_n_steps: also save mid-epoch every n steps.
        keep_last, keep_best, monitor: checkpoint retention; ``monitor`` also drives early stopping.
        resume: True resumes from ``checkpoint_dir``; a path resumes from that file or directory.
        early_stopping_patience: stop after this many epochs without ``monitor`` improving.
        log_dir: write ``metrics.csv`` and TensorBoard events here (rank 0).
        progress: show a tqdm bar on rank 0.
    """

    def __init__(self, model: keras.Model, optimizer: keras.optimizers.Optimizer, loss_fn: LossFn,
                 train_data: Any, val_data: Any = None, *, batch_size: int = 32, max_epochs: int = 1,
                 metrics: dict[str, LossFn] | None = None, callbacks: Iterable[Callback] = (),
                 backend: Backend | None = None, seed: int = 0, grad_clip_norm: float | None = None,
                 compression: str = "none", backward_passes_per_step: int = 1, op: str = "average",
                 scale_lr: bool = True, warmup_epochs: float = 0.0,
                 lr_schedule: Callable[[float], float] | None = None,
                 checkpoint_dir: str | os.PathLike | None = None, checkpoint_every_n_steps: int | None = None,
                 keep_last: int = 2, keep_best: int = 1, monitor: str = "val_loss",
                 resume: bool | str | os.PathLike = False, early_stopping_patience: int | None = None,
                 log_dir: str | os.PathLike | None = None, progress: bool = True) -> None:
        if max_epochs < 1:
            raise ValueError(f"max_epochs must be >= 1 (got {max_epochs})")
        check_resume_target(resume, checkpoint_dir)
        self.backend = backend or HorovodBackend()
        self.adapter = TensorFlowAdapter(self.backend)
        self.model = model
        if not is_distributed(optimizer):
            optimizer = DistributedOptimizer(optimizer, compression=compression, op=op, scale_lr=scale_lr,
                                             backward_passes_per_step=backward_passes_per_step)
        self.optimizer = optimizer
        self._set_accumulation(optimizer.backward_passes_per_step, checkpoint_every_n_steps)
        build_optimizer(optimizer, _built(model))
        self.batch_size = batch_size
        self.max_epochs = max_epochs
        self.metrics = dict(metrics or {})
        self.train = ShardedArrays(_pair(train_data, "train_data"), batch_size, self.backend.rank,
                                   self.backend.size, shuffle=True, seed=seed)
        self.val_data = None if val_data is None else self._like_train(_pair(val_data, "val_data"))
        self.steps = TrainerSteps(model, optimizer, loss_fn, self.metrics, grad_clip_norm,
                                  batch_signature(self.train.arrays))
        self.callbacks = CallbackList(default_callbacks(
            warmup_epochs=warmup_epochs, lr_schedule=lr_schedule, checkpoint_dir=checkpoint_dir,
            every_n_steps=checkpoint_every_n_steps, keep_last=keep_last, keep_best=keep_best, monitor=monitor,
            resume=resume, patience=early_stopping_patience, log_dir=log_dir, progress=progress,
            has_val=val_data is not None))
        for callback in callbacks:
            self.callbacks.add(callback)
        self.ctx = TrainContext(backend=self.backend, adapter=self.adapter, model=model, optimizer=optimizer,
                                max_epochs=max_epochs)

    def _position_data(self, epoch: int, samples_seen: int) -> int:
        self.train.set_epoch(epoch, samples_seen)
        return len(self.train)

    def _train_epoch(self, ctx: TrainContext) -> dict[str, float]:
        sums = np.zeros(1 + len(self.metrics))
        ctx.sample_count = 0
        for (x, y), global_size in self.train:
            self.callbacks.on_batch_begin(ctx)
            local = num_samples(y)
            weight = tf.constant(self._gradient_weight(ctx, local, global_size), tf.float64)
            loss, values = self._step(ctx, x, y, weight)
            sums += np.array([float(loss), *(float(v) for v in values)]) * local
            if self._end_batch(ctx, local, global_size, loss):
                break
        means = sums / max(ctx.sample_count, 1)
        return dict(zip(["loss", *self.metrics], means.tolist()))

    def _step(self, ctx: TrainContext, x: Any, y: Any, weight: tf.Tensor) -> tuple[tf.Tensor, list[tf.Tensor]]:
        if self._is_update_step(ctx):
            loss, values, bad_rank = self.steps.sync(x, y, weight)
            bad_rank = int(bad_rank)
            ctx.extras[NONFINITE_RANK] = bad_rank if bad_rank >= 0 else None
        else:
            loss, values = self.steps.accumulate(x, y, weight)
            ctx.extras.pop(NONFINITE_RANK, None)
        return loss, values

    def evaluate(self, data: Any = None) -> dict[str, float]:
        """Loss and metrics on validation data, exact over all ranks (``val_`` prefixed)."""
        data = self.val_data if data is None else self._like_train(_pair(data, "data"))
        if data is None:
            return {}
        order = ShardedOrder(num_samples(data), self.backend.rank, self.backend.size, self.batch_size,
                             shuffle=False)
        sums = np.zeros(2 + len(self.metrics))
        for indices in order:
            x, y = take(data, indices)
            values = self.steps.evaluate(x, y)
            sums += np.array([*(float(v) for v in values), 1.0]) * len(indices)
        totals = self.backend.allreduce_sum(sums.tolist())
        return {f"val_{name}": total / totals[-1] for name, total in zip(["loss", *self.metrics], totals[:-1])}

    def _like_train(self, data: Any) -> Any:
        """``data`` as NumPy arrays with the training data's dtypes (the compiled steps' signature)."""
        try:
            return tf.nest.map_structure(lambda a, ref: a.astype(ref.dtype, copy=False), as_arrays(data),
                                         self.train.arrays)
        except (ValueError, TypeError) as err:
            raise ValueError(f"validation data must have the structure of train_data ({err})") from err


def _pair(data: Any, name: str) -> tuple[Any, Any]:
    if not isinstance(data, (tuple, list)) or len(data) != 2:
        raise TypeError(f"{name} must be a pair (x, y) of arrays or tensors (got {type(data).__name__}); "
                        "for a tf.data pipeline write a loop around make_train_step")
    x, y = data
    return (tuple(x) if isinstance(x, list) else x), y


def _built(model: keras.Model) -> keras.Model:
    if not model.built or not model.trainable_variables:
        raise ValueError(f"model {model.name!r} is not built: give it a keras.Input(shape) or call "
                         "model.build(input_shape) before creating the Trainer")
    return model
