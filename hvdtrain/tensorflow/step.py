"""Compiled distributed train steps: one for hand-written loops, and the Trainer's."""
from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import keras
import tensorflow as tf

from hvdtrain.tensorflow.backend import TensorFlowBackend, default_backend
from hvdtrain.tensorflow.optimizer import GradientReducer, is_distributed

LossFn = Callable[[Any, Any], Any]


def make_train_step(model: keras.Model, optimizer: keras.optimizers.Optimizer, loss_fn: LossFn, *,
                    reducer: GradientReducer | None = None, backend: TensorFlowBackend | None = None
                    ) -> Callable[[Any, Any], tf.Tensor]:
    """A ``tf.function`` ``step(x, y) -> loss`` for a hand-written ``tf.GradientTape`` loop.

    Gradients are averaged across workers with one grouped allreduce
    before they are applied: by the optimizer itself when it is a
    ``DistributedOptimizer`` (which also handles gradient accumulation, and
    skips the update on every rank when any rank's loss is not finite;
    ``optimizer.pop_nonfinite_rank()`` says which), otherwise here with
    ``reducer`` (the plain optimizer's LR is not scaled).
    Broadcast the initial state first (``broadcast_state(model, optimizer)``)
    and feed each rank its own shard with the same number of steps.

    Args:
        model: a built Keras model.
        optimizer: a Keras optimizer, plain or distributed.
        loss_fn: ``loss_fn(y_true, y_pred)``, e.g. a ``keras.losses.Loss``.
        reducer: how to combine gradients for a plain optimizer (default: average).
        backend: the backend a plain optimizer's gradients are reduced through (default: Horovod's).

    Returns:
        The compiled step, returning this rank's batch loss.
    """
    reducer = reducer or GradientReducer()
    distributed = is_distributed(optimizer)
    if backend is None and not distributed:
        backend = default_backend()

    @tf.function(reduce_retracing=True)
    def step(x: Any, y: Any) -> tf.Tensor:
        with tf.GradientTape() as tape:
            loss = batch_loss(model, loss_fn, y, model(x, training=True))
            # A distributed optimizer notes here whether the loss is finite (a non-finite loss on any
            # rank skips the update on every rank); a LossScaleOptimizer scales it for float16.
            scaled = optimizer.scale_loss(loss)
        variables = model.trainable_variables
        grads = tape.gradient(scaled, variables)
        if distributed:
            optimizer.apply(grads, variables)
        else:
            optimizer.apply(reducer.reduce(grads, backend), variables)
        return loss

    return step


def batch_loss(model: keras.Model, loss_fn: LossFn, y_true: Any, y_pred: Any) -> tf.Tensor:
    """The batch-mean loss plus the model's regularization losses (as ``model.fit`` reports it)."""
    loss = tf.reduce_mean(loss_fn(y_true, y_pred))
    if model.losses:
        loss = loss + tf.cast(tf.add_n(model.losses), loss.dtype)
    return loss


class TrainerSteps:
    """The Trainer's compiled steps.

    ``accumulate`` adds this rank's weighted gradients to the optimizer's
    accumulators; ``sync`` adds the last pass, averages across workers in
    one grouped allreduce that also carries a per-rank "loss was not finite"
    flag, and applies the update only when every rank's losses were finite.

    Args:
        model: the model.
        optimizer: a ``DistributedOptimizer``.
        loss_fn: ``loss_fn(y_true, y_pred)``.
        metrics: ``{name: fn(y_true, y_pred) -> batch mean}``.
        signature: ``(x_spec, y_spec)`` of a batch.
    """

    def __init__(self, model: keras.Model, optimizer: Any, loss_fn: LossFn, metrics: Mapping[str, LossFn],
                 signature: tuple[Any, Any]) -> None:
        self.model, self.optimizer, self.loss_fn = model, optimizer, loss_fn
        self.metrics = dict(metrics)
        self.passes = optimizer.backward_passes_per_step
        weight = tf.TensorSpec((), tf.float64)
        self.accumulate = tf.function(self._accumulate, input_signature=[*signature, weight])
        self.sync = tf.function(self._sync, input_signature=[*signature, weight])
        self.evaluate = tf.function(self._evaluate, input_signature=list(signature))

    def _forward_backward(self, x: Any, y: Any, weight: tf.Tensor) -> tuple[tf.Tensor, list[Any], list[Any]]:
        with tf.GradientTape() as tape:
            y_pred = self.model(x, training=True)
            loss = batch_loss(self.model, self.loss_fn, y, y_pred)
            scaled = self.optimizer.scale_loss(loss * tf.cast(weight, loss.dtype))  # notes a non-finite loss
        grads = tape.gradient(scaled, self.model.trainable_variables)
        values = [tf.reduce_mean(fn(y, y_pred)) for fn in self.metrics.values()]
        return loss, grads, values

    def _accumulate(self, x: Any, y: Any, weight: tf.Tensor) -> tuple[tf.Tensor, list[Any]]:
        loss, grads, values = self._forward_backward(x, y, weight)
        self.optimizer.accumulate_gradients(grads, self.model.trainable_variables)
        return loss, values

    def _sync(self, x: Any, y: Any, weight: tf.Tensor) -> tuple[tf.Tensor, list[Any], tf.Tensor]:
        loss, grads, values = self._forward_backward(x, y, weight)
        variables = self.model.trainable_variables
        if self.passes > 1:
            grads = self.optimizer.accumulated_gradients(grads, variables, 1.0)
        bad_rank = self.optimizer.reduce_and_apply(grads, variables, self.optimizer.gradient_clip_norm)
        return loss, values, bad_rank

    def _evaluate(self, x: Any, y: Any) -> list[tf.Tensor]:
        y_pred = self.model(x, training=False)
        loss = batch_loss(self.model, self.loss_fn, y, y_pred)
        return [loss, *(tf.reduce_mean(fn(y, y_pred)) for fn in self.metrics.values())]
