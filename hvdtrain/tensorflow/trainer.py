"""A custom-loop Trainer for Keras 3 models: sharded arrays, distributed optimizer, callbacks."""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from hvdtrain.callbacks import Callback, CallbackList, default_callbacks
from hvdtrain.core.context import TrainContext
from hvdtrain.core.options import TrainingOptions, accepts_options
from hvdtrain.core.progress import StepOutcome
from hvdtrain.core.sharding import ShardedOrder
from hvdtrain.engine.loop import EpochLoop
from hvdtrain.tensorflow.adapter import TensorFlowAdapter, build_optimizer
from hvdtrain.tensorflow.data import ShardedArrays, as_arrays, batch_signature, num_samples, take
from hvdtrain.tensorflow.optimizer import DistributedOptimizer, is_distributed
from hvdtrain.tensorflow.precision import check_model_precision, with_loss_scaling
from hvdtrain.tensorflow.step import LossFn, TrainerSteps


def accuracy(outputs: Any, targets: Any) -> tf.Tensor:
    """Fraction of rows whose arg-max (over logits or probabilities) matches the class label.

    The same as ``hvdtrain.torch.accuracy``. Either order works, so it also serves as a Keras metric
    called ``(y_true, y_pred)``: the argument with a class dimension (more dimensions, or a last
    dimension above 1) holds the outputs; labels of the same shape are one-hot.
    """
    outputs, targets = tf.convert_to_tensor(outputs), tf.convert_to_tensor(targets)
    if _are_labels(outputs.shape, targets.shape):
        outputs, targets = targets, outputs
    predicted = tf.reshape(tf.argmax(outputs, axis=-1, output_type=tf.int64), [-1])
    if targets.shape.rank == outputs.shape.rank and targets.shape[-1] == outputs.shape[-1]:
        targets = tf.argmax(targets, axis=-1, output_type=tf.int64)
    return tf.reduce_mean(tf.cast(tf.equal(predicted, tf.cast(tf.reshape(targets, [-1]), tf.int64)), tf.float32))


def _are_labels(first: tf.TensorShape, second: tf.TensorShape) -> bool:
    """Whether ``first`` (not ``second``) is the shape of the labels; static shapes, so it traces."""
    if first.rank != second.rank:
        return first.rank < second.rank
    return first[-1] == 1 and second[-1] != 1


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
        metrics: ``{name: fn(y_true, y_pred) -> batch mean}``; ``val_`` versions are logged too.
        callbacks: user callbacks, merged with the defaults by ``order``.
        backend: defaults to the Horovod backend (call ``hvdtrain.tensorflow.init()`` first).
        options: the ``TrainingOptions`` (epochs, batch size, LR warmup, checkpoints, ...).
        **overrides: any ``TrainingOptions`` field, overriding ``options``.
    """

    @accepts_options
    def __init__(self, model: keras.Model, optimizer: keras.optimizers.Optimizer, loss_fn: LossFn,
                 train_data: Any, val_data: Any = None, *, metrics: dict[str, LossFn] | None = None,
                 callbacks: Iterable[Callback] = (), backend: Any = None, options: TrainingOptions | None = None,
                 **overrides: Any) -> None:
        self.options = o = TrainingOptions.merged(options, overrides, "Trainer")
        if backend is None:
            from hvdtrain.tensorflow.backend import HorovodBackend

            backend = HorovodBackend()
        self.backend = backend
        self.adapter = TensorFlowAdapter(backend)
        self.model = model
        check_model_precision(model, o.precision)
        self.optimizer = distributed_optimizer(with_loss_scaling(optimizer, o.precision), backend, o)
        self.accumulation = self.optimizer.backward_passes_per_step
        build_optimizer(self.optimizer, _built(model))
        self.metrics = dict(metrics or {})
        self.train = ShardedArrays(_pair(train_data, "train_data"), o.batch_size, backend.rank, backend.size,
                                   shuffle=True, seed=o.seed)
        self.val_data = None if val_data is None else self._like_train(_pair(val_data, "val_data"))
        self.steps = TrainerSteps(model, self.optimizer, loss_fn, self.metrics, batch_signature(self.train.arrays))
        self.callbacks = CallbackList(default_callbacks(o, has_val=val_data is not None))
        for callback in callbacks:
            self.callbacks.add(callback)
        self.ctx = TrainContext(backend=backend, adapter=self.adapter, model=model, optimizer=self.optimizer,
                                max_epochs=o.epochs)

    def _position_data(self, epoch: int, samples_seen: int) -> int:
        self.train.set_epoch(epoch, samples_seen)
        return len(self.train)

    def _train_epoch(self, ctx: TrainContext) -> dict[str, float]:
        sums = np.zeros(1 + len(self.metrics))
        for (x, y), global_size in self.train:
            self._begin_batch(ctx)
            local = num_samples(y)
            weight = tf.constant(self._gradient_weight(ctx, local, global_size), tf.float64)
            outcome, values = self._step(ctx, x, y, weight)
            sums += np.array([float(outcome.loss), *(float(v) for v in values)]) * local
            if self._end_batch(ctx, local, global_size, outcome):
                break
        means = sums / max(ctx.sample_count, 1)
        return dict(zip(["loss", *self.metrics], means.tolist()))

    def _step(self, ctx: TrainContext, x: Any, y: Any, weight: tf.Tensor) -> tuple[StepOutcome, list[tf.Tensor]]:
        if not self._is_update_step(ctx):
            loss, values = self.steps.accumulate(x, y, weight)
            return StepOutcome(loss, updated=False), values
        with self.backend.watch(f"training step {ctx.global_step + 1} (its gradient allreduce)"):
            loss, values, bad_rank = self.steps.sync(x, y, weight)
        bad_rank = int(bad_rank)
        outcome = StepOutcome(loss, True, nonfinite_checked=True, nonfinite_rank=bad_rank if bad_rank >= 0 else None)
        return outcome, values

    def evaluate(self, data: Any = None) -> dict[str, float]:
        """Loss and metrics on validation data, exact over all ranks (``val_`` prefixed)."""
        data = self.val_data if data is None else self._like_train(_pair(data, "data"))
        if data is None:
            return {}
        order = ShardedOrder(num_samples(data), self.backend.rank, self.backend.size, self.options.batch_size,
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


def distributed_optimizer(optimizer: keras.optimizers.Optimizer, backend: Any,
                          o: TrainingOptions) -> keras.optimizers.Optimizer:
    """``optimizer`` converted by ``DistributedOptimizer`` as the options say, unless it already is."""
    if is_distributed(optimizer):
        return optimizer
    if o.lr is not None:
        optimizer.learning_rate = o.lr
    return DistributedOptimizer(optimizer, backend=backend, compression=o.compression, op=o.op,
                                scale_lr=o.scale_lr, backward_passes_per_step=o.backward_passes_per_step,
                                clip_norm=o.grad_clip_norm)


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
