"""DistributedOptimizer in one process: class, config, LR scaling, accumulation, hand-written steps."""
from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

import hvdtrain.tensorflow as htf
from hvdtrain.tensorflow.optimizer import GradientReducer
from hvdtrain.tensorflow.schedule import scale_learning_rate


def linear_model(units: int = 1) -> keras.Model:
    return keras.Sequential([keras.Input((2,)), keras.layers.Dense(units, use_bias=False,
                                                                    kernel_initializer="zeros")])


def test_conversion_keeps_class_config_state_and_saved_class(backend):
    plain = keras.optimizers.SGD(learning_rate=0.1, momentum=0.9)
    config = plain.get_config()
    optimizer = htf.DistributedOptimizer(plain)
    assert optimizer is plain
    assert isinstance(optimizer, keras.optimizers.SGD) and htf.is_distributed(optimizer)
    assert optimizer.get_config() == config
    saved = keras.saving.serialize_keras_object(optimizer)
    assert saved["class_name"] == "SGD" and saved["module"] == "keras.src.optimizers.sgd"
    restored = keras.saving.deserialize_keras_object(saved)
    assert type(restored) is keras.optimizers.SGD, "a saved model loads with the plain optimizer"


def test_bad_arguments_and_double_conversion_fail_with_the_fix(backend):
    with pytest.raises(ValueError, match="op must be one of"):
        htf.DistributedOptimizer(keras.optimizers.SGD(), op="adasum")
    with pytest.raises(ValueError, match="compression must be one of"):
        htf.DistributedOptimizer(keras.optimizers.SGD(), compression="int8")
    with pytest.raises(ValueError, match="backward_passes_per_step must be >= 1"):
        htf.DistributedOptimizer(keras.optimizers.SGD(), backward_passes_per_step=0)
    with pytest.raises(ValueError, match="expected a Keras 3 optimizer"):
        htf.DistributedOptimizer(object())
    with pytest.raises(ValueError, match="use backward_passes_per_step here instead, not both"):
        htf.DistributedOptimizer(keras.optimizers.SGD(gradient_accumulation_steps=2), backward_passes_per_step=2)
    optimizer = htf.DistributedOptimizer(keras.optimizers.SGD())
    with pytest.raises(ValueError, match="already distributed"):
        htf.DistributedOptimizer(optimizer)


def test_learning_rate_scaling_of_a_variable_and_of_a_schedule(backend):
    optimizer = keras.optimizers.Adam(learning_rate=0.01)
    scale_learning_rate(optimizer, 4)
    assert float(optimizer.learning_rate.numpy()) == pytest.approx(0.04)

    schedule = keras.optimizers.schedules.ExponentialDecay(0.1, decay_steps=10, decay_rate=0.5)
    optimizer = keras.optimizers.SGD(learning_rate=schedule)
    scale_learning_rate(optimizer, 2)
    assert isinstance(optimizer._learning_rate, htf.ScaledSchedule)
    assert float(optimizer.learning_rate) == pytest.approx(0.2)
    copy = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(optimizer._learning_rate))
    assert float(copy(10)) == pytest.approx(0.1)

    with pytest.raises(ValueError, match="plain callable"):
        scale_learning_rate(keras.optimizers.SGD(learning_rate=lambda: 0.1), 2)


@pytest.mark.parametrize("compiled", [False, True])
def test_accumulation_applies_the_mean_once_every_n_passes(backend, compiled):
    model = linear_model()
    optimizer = htf.DistributedOptimizer(keras.optimizers.SGD(learning_rate=1.0), backward_passes_per_step=2)
    variables = model.trainable_variables

    def apply(grad):
        optimizer.apply([grad], variables)

    apply = tf.function(apply) if compiled else apply
    g1, g2 = tf.constant([[1.0], [2.0]]), tf.constant([[3.0], [6.0]])
    apply(g1)
    np.testing.assert_array_equal(model.get_weights()[0], [[0.0], [0.0]])
    assert int(optimizer.iterations) == 0
    apply(g2)
    np.testing.assert_allclose(model.get_weights()[0], [[-2.0], [-4.0]])  # -(g1 + g2) / 2
    assert int(optimizer.iterations) == 1
    names = [v.path for v in optimizer.variables]
    assert any("hvd_accumulator" in n for n in names) and any("hvd_pass_count" in n for n in names), \
        "accumulators are optimizer variables, so checkpoints and the broadcast cover them"


def test_single_worker_reduction_is_the_identity(backend):
    grads = [tf.constant([1.0, 2.0]), None, tf.constant([3.0], tf.float64)]
    for reducer in (GradientReducer(), GradientReducer("sum", "fp16", 4.0)):
        out = reducer.reduce(grads, backend)
        assert out[1] is None
        np.testing.assert_array_equal(out[0], [1.0, 2.0])
        np.testing.assert_array_equal(out[2], [3.0])


@pytest.mark.parametrize("distributed", [False, True])
def test_make_train_step_trains_with_plain_or_distributed_optimizer(backend, distributed):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    optimizer = keras.optimizers.SGD(learning_rate=0.5)
    if distributed:
        optimizer = htf.DistributedOptimizer(optimizer)
    htf.broadcast_state(model, optimizer, backend)
    step = htf.make_train_step(model, optimizer, keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    rng = np.random.RandomState(0)
    x = rng.randn(64, 4).astype(np.float32)
    y = np.argmax(x[:, :3], axis=1)
    losses = [float(step(x, y)) for _ in range(30)]
    assert losses[-1] < 0.5 * losses[0]
