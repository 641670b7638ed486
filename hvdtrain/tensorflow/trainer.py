"""A custom-loop Trainer for Keras 3 models: sharded arrays or tf.data, distributed optimizer, callbacks."""
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
from hvdtrain.tensorflow.adapter import TensorFlowAdapter, build_optimizer, state_variables, variable_specs
from hvdtrain.tensorflow.backend import TensorFlowBackend, default_backend
from hvdtrain.tensorflow.data import (
    DatasetBatches,
    ShardedArrays,
    as_arrays,
    batch_signature,
    check_elastic_input,
    dataset_signature,
    num_samples,
    take,
)
from hvdtrain.tensorflow.optimizer import DistributedOptimizer, check_keras_options, is_distributed
from hvdtrain.tensorflow.precision import check_model_precision, with_loss_scaling
from hvdtrain.tensorflow.schedule import drive_keras_schedule, learning_rate_owner
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
    Epochs resume exactly, even mid-epoch (from ``checkpoint_every_n_steps``). Under elastic
    training (``hvdtrain run --elastic``) the data must be arrays: they are re-sharded whenever
    workers leave or join (see ``docs/tensorflow.md``).

    ``train_data`` is either the whole data set as arrays, which every rank
    passes and the Trainer shards (``ShardedArrays``), or a ``tf.data.Dataset``
    that is already this rank's shard (``shard_dataset``), batched, of
    ``(x, y)`` elements, as for ``hvdtrain.tensorflow.fit``. With a dataset:

    - the ranks agree on the steps per epoch: the fewest batches any rank
      has, or ``steps_per_epoch`` when the length is unknown; each epoch
      iterates the dataset anew, and a rank's extra batches are left out;
    - the compiled steps' input signature comes from ``dataset.element_spec``;
    - gradients are weighted as if every rank's batch had the same size
      (the ranks' batch sizes are not exchanged), so an uneven final batch
      is not weighted by its share as it is for arrays;
    - a mid-epoch resume skips the batches already done (``dataset.skip``):
      exact only when the dataset yields the same order every time it is
      iterated in that epoch (no unseeded or per-iteration reshuffling).

    Args:
        model: a built Keras model (give it a ``keras.Input``); every rank builds it the same way.
        optimizer: a Keras optimizer (converted with ``DistributedOptimizer`` for you) or an
            already distributed one. Its learning rate may be a Keras ``LearningRateSchedule`` of
            single-worker rates: scaled by the world size, with ``warmup_epochs``/``lr_schedule``
            multiplied on top; its position, ``optimizer.iterations``, is checkpointed.
        loss_fn: ``loss_fn(y_true, y_pred)`` returning the batch mean (e.g. a ``keras.losses.Loss``).
        train_data: ``(x, y)``: NumPy arrays or tensors (``x`` may be a tuple or dict of them), or a
            ``tf.data.Dataset`` of this rank's ``(x, y)`` batches.
        val_data: optional ``(x, y)`` arrays or a dataset of this rank's ``(x, y)`` batches, evaluated
            exactly over all ranks every epoch.
        metrics: ``{name: fn(y_true, y_pred) -> batch mean}``; ``val_`` versions are logged too.
        callbacks: user callbacks, merged with the defaults by ``order``.
        backend: defaults to the Horovod backend (call ``hvdtrain.tensorflow.init()`` first).
        steps_per_epoch: batches per epoch of a ``train_data`` dataset whose length is unknown (the same
            on every rank; each rank's shard must reach it).
        options: the ``TrainingOptions`` (epochs, batch size, LR warmup, checkpoints, ...).
        **overrides: any ``TrainingOptions`` field, overriding ``options``.
    """

    @accepts_options
    def __init__(self, model: keras.Model, optimizer: keras.optimizers.Optimizer, loss_fn: LossFn,
                 train_data: Any, val_data: Any = None, *, metrics: dict[str, LossFn] | None = None,
                 callbacks: Iterable[Callback] = (), backend: TensorFlowBackend | None = None,
                 steps_per_epoch: int | None = None,
                 options: TrainingOptions | None = None, **overrides: Any) -> None:
        self.options = o = TrainingOptions.merged(options, overrides, "Trainer")
        check_keras_options(o)
        if backend is None:
            backend = default_backend()
        self.backend = backend
        self.adapter = TensorFlowAdapter(backend)
        self.model = model
        check_model_precision(model, o.precision)
        self.optimizer = distributed_optimizer(with_loss_scaling(optimizer, o.precision), backend, o)
        self.accumulation = self.optimizer.backward_passes_per_step
        build_optimizer(self.optimizer, _built(model))
        self.metrics = dict(metrics or {})
        check_elastic_input(backend, train_data=train_data, val_data=val_data)
        self.train, self.signature = _training_input(train_data, backend, o, steps_per_epoch)
        self.val_data = None if val_data is None else self._validation_input(val_data, "val_data")
        self.steps = TrainerSteps(model, self.optimizer, loss_fn, self.metrics, self.signature)
        self.callbacks = CallbackList(default_callbacks(o, has_val=val_data is not None))
        for callback in callbacks:
            self.callbacks.add(callback)
        drive_keras_schedule(self.optimizer, self.callbacks)
        self.ctx = TrainContext(backend=backend, adapter=self.adapter, model=model, optimizer=self.optimizer,
                                max_epochs=o.epochs, scale_lr=o.scale_lr)

    def _position_data(self, epoch: int, samples_seen: int) -> int:
        if isinstance(self.train, DatasetBatches):
            return self.train.set_epoch(self.ctx.progress.batches_done)
        self.train.set_epoch(epoch, samples_seen)
        return len(self.train)

    def _model_specs(self) -> list[tuple[str, tuple[int, ...], str]]:
        return variable_specs(state_variables(self.model, self.optimizer))

    def _after_elastic_load(self, old_size: int) -> None:
        self.optimizer.forget_noted_losses()
        self.optimizer.follow_world_size()
        self.train, _ = _training_input(self.train.arrays, self.backend, self.options, None)
        # The compiled steps read the rank and world size when traced: trace them anew.
        self.steps = TrainerSteps(self.model, self.optimizer, self.steps.loss_fn, self.metrics, self.signature)

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
        """Loss and metrics on validation data, exact over all ranks (``val_`` prefixed).

        Arrays are sharded here; a dataset is this rank's shard, evaluated whole.
        """
        data = self.val_data if data is None else self._validation_input(data, "data")
        if data is None:
            return {}
        sums = self._dataset_sums(data) if isinstance(data, tf.data.Dataset) else self._array_sums(data)
        totals = self.backend.allreduce_sum(sums.tolist())
        return {f"val_{name}": total / totals[-1] for name, total in zip(["loss", *self.metrics], totals[:-1])}

    def _array_sums(self, data: Any) -> np.ndarray:
        """Sample-weighted sums of loss and metrics over this rank's shard of ``data``, and its sample count."""
        order = ShardedOrder(num_samples(data), self.backend.rank, self.backend.size, self.options.batch_size,
                             shuffle=False)
        sums = np.zeros(2 + len(self.metrics))
        for indices in order:
            x, y = take(data, indices)
            values = self.steps.evaluate(x, y)
            sums += np.array([*(float(v) for v in values), 1.0]) * len(indices)
        return sums

    def _dataset_sums(self, dataset: tf.data.Dataset) -> np.ndarray:
        """Like ``_array_sums``, over every batch of this rank's ``dataset``."""
        sums = np.zeros(2 + len(self.metrics))
        for x, y in dataset:
            values = self.steps.evaluate(x, y)
            sums += np.array([*(float(v) for v in values), 1.0]) * num_samples(y)
        return sums

    def _validation_input(self, data: Any, name: str) -> Any:
        """A dataset checked against the compiled steps' signature, or arrays converted to it."""
        if not isinstance(data, tf.data.Dataset):
            return self._like_train(_pair(data, name))
        if data.cardinality() == tf.data.INFINITE_CARDINALITY:
            raise ValueError(f"{name} is an endless dataset: validation reads it whole, so leave out .repeat()")
        spec = dataset_signature(data, name)
        try:
            tf.nest.assert_same_structure(spec, self.signature)
            mismatched = [f"{s} vs {ref}" for s, ref in zip(tf.nest.flatten(spec), tf.nest.flatten(self.signature))
                          if not ref.is_compatible_with(s)]
        except (ValueError, TypeError) as err:
            raise ValueError(f"{name} must have the structure of train_data ({err})") from err
        if mismatched:
            raise ValueError(f"{name}'s batches do not match train_data's (shape or dtype): {mismatched}; "
                             "cast or reshape them in the pipeline")
        return data

    def _like_train(self, data: Any) -> Any:
        """``data`` as NumPy arrays with the training data's dtypes (the compiled steps' signature)."""
        try:
            return tf.nest.map_structure(lambda a, ref: a.astype(ref.dtype.as_numpy_dtype, copy=False),
                                         as_arrays(data), self.signature)
        except (ValueError, TypeError) as err:
            raise ValueError(f"validation data must have the structure of train_data ({err})") from err


def _training_input(data: Any, backend: TensorFlowBackend, o: TrainingOptions,
                    steps_per_epoch: int | None) -> tuple[ShardedArrays | DatasetBatches, tuple[Any, Any]]:
    """This rank's training batches and the compiled steps' ``(x_spec, y_spec)``."""
    if isinstance(data, tf.data.Dataset):
        train = DatasetBatches(data, backend, steps_per_epoch)
        return train, train.signature
    if steps_per_epoch is not None:
        raise ValueError("steps_per_epoch is for a tf.data.Dataset train_data; with arrays the Trainer computes "
                         "the steps from batch_size: leave it out")
    train = ShardedArrays(_pair(data, "train_data"), o.batch_size, backend.rank, backend.size, shuffle=True,
                          seed=o.seed)
    return train, batch_signature(train.arrays)


def distributed_optimizer(optimizer: keras.optimizers.Optimizer, backend: TensorFlowBackend,
                          o: TrainingOptions) -> keras.optimizers.Optimizer:
    """``optimizer`` converted by ``DistributedOptimizer`` as the options say, unless it already is."""
    if is_distributed(optimizer):
        return optimizer
    if o.lr is not None:
        if not isinstance(learning_rate_owner(optimizer)._learning_rate, keras.Variable):
            raise ValueError(f"lr={o.lr} sets a float learning rate, but {type(optimizer).__name__}'s is a "
                             "schedule: leave lr out (the schedule gives the single-worker rates), or build the "
                             "optimizer with a float learning_rate")
        optimizer.learning_rate = o.lr
    return DistributedOptimizer(optimizer, backend=backend, compression=o.compression, op=o.op,
                                scale_lr=o.scale_lr, backward_passes_per_step=o.backward_passes_per_step,
                                clip_norm=o.grad_clip_norm)


def _pair(data: Any, name: str) -> tuple[Any, Any]:
    if not isinstance(data, (tuple, list)) or len(data) != 2:
        raise TypeError(f"{name} must be a pair (x, y) of arrays or tensors, or a tf.data.Dataset of (x, y) "
                        f"batches (got {type(data).__name__})")
    x, y = data
    return (tuple(x) if isinstance(x, list) else x), y


def _built(model: keras.Model) -> keras.Model:
    if not model.built or not model.trainable_variables:
        raise ValueError(f"model {model.name!r} is not built: give it a keras.Input(shape) or call "
                         "model.build(input_shape) before creating the Trainer")
    return model
