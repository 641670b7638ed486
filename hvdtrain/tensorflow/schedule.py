"""A Keras ``LearningRateSchedule`` under hvdtrain: scaled by the world size, with the warmup multiplied on top.

The schedule stays in the optimizer and is evaluated inside the compiled step at
``optimizer.iterations``, which checkpoints hold, so a resumed run continues it
exactly. hvdtrain's ``LearningRateSchedule`` callback (``warmup_epochs``,
``lr_schedule``) does not set the rate: it sets ``ScaledSchedule.multiplier``.
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import keras
import tensorflow as tf

from hvdtrain.callbacks import Callback, LearningRateSchedule

KerasSchedule = keras.optimizers.schedules.LearningRateSchedule


@keras.saving.register_keras_serializable(package="hvdtrain")
class ScaledSchedule(KerasSchedule):
    """A learning-rate schedule times a constant (the world size, for ``scale_lr``) times a multiplier.

    The multiplier (1 until set) is what hvdtrain's LR callback sets each
    batch: warmup and ``lr_schedule``. It is a variable read inside the
    compiled step, and not saved: the callback derives it from the epoch.

    Args:
        schedule: the schedule to scale.
        factor: the constant.
    """

    def __init__(self, schedule: KerasSchedule, factor: float = 1.0) -> None:
        self.schedule = schedule
        self.factor = float(factor)
        with tf.init_scope():  # created eagerly even when deserialized inside a traced function
            self.multiplier = tf.Variable(1.0, trainable=False, name="hvdtrain_lr_multiplier")

    def __call__(self, step: Any) -> Any:
        rate = tf.convert_to_tensor(self.schedule(step)) * self.factor
        return rate * tf.cast(self.multiplier, rate.dtype)

    def set_multiplier(self, value: float) -> None:
        self.multiplier.assign(value)

    def get_config(self) -> dict[str, Any]:
        return {"schedule": keras.saving.serialize_keras_object(self.schedule), "factor": self.factor}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> ScaledSchedule:
        return cls(keras.saving.deserialize_keras_object(config["schedule"]), config["factor"])


def learning_rate_owner(optimizer: keras.optimizers.Optimizer) -> keras.optimizers.Optimizer:
    """The optimizer that holds the learning rate (a ``LossScaleOptimizer``'s inner one)."""
    return getattr(optimizer, "inner_optimizer", optimizer)


def scale_learning_rate(optimizer: keras.optimizers.Optimizer, factor: float) -> None:
    """Multiply the optimizer's learning rate (a variable or a schedule) by ``factor``.

    A schedule is wrapped in a ``ScaledSchedule`` even when ``factor`` is 1, so
    that hvdtrain's LR callbacks can multiply it.
    """
    owner = learning_rate_owner(optimizer)
    rate = owner._learning_rate
    if isinstance(rate, keras.Variable):
        rate.assign(rate * factor)
    elif isinstance(rate, KerasSchedule):
        owner.learning_rate = ScaledSchedule(rate, factor)
    elif factor != 1:
        raise ValueError("cannot scale a learning rate given as a plain callable; pass a float or a "
                         "keras.optimizers.schedules.LearningRateSchedule, or use scale_lr=False")


def drive_keras_schedule(optimizer: keras.optimizers.Optimizer, callbacks: Iterable[Callback]) -> None:
    """Let hvdtrain's LR callbacks multiply the optimizer's Keras schedule instead of setting its rate.

    Does nothing when the learning rate is a float (the callbacks set it) or no LR callback is present.

    Raises:
        TypeError: the schedule is not wrapped for hvdtrain (the optimizer was not converted by
            ``DistributedOptimizer``), or the learning rate is a plain callable.
    """
    lr_callbacks = [c for c in callbacks if isinstance(c, LearningRateSchedule)]
    rate = learning_rate_owner(optimizer)._learning_rate
    if not lr_callbacks or isinstance(rate, keras.Variable):
        return
    if not isinstance(rate, ScaledSchedule):
        raise TypeError(
            f"{type(optimizer).__name__}'s learning rate is {type(rate).__name__}, which hvdtrain's learning-rate "
            "warmup and lr_schedule cannot multiply. Pass a float or a keras.optimizers.schedules."
            "LearningRateSchedule, and convert the optimizer with hvdtrain.tensorflow.DistributedOptimizer before "
            "training (hvdtrain.tensorflow.fit and the Trainer do): it wraps the schedule so they can.")
    for callback in lr_callbacks:
        callback.apply_factor = rate.set_multiplier
