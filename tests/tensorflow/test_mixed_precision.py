"""Keras mixed precision in one process: policies, loss scaling through the distributed optimizer."""
from __future__ import annotations

import keras
import numpy as np
import pytest

import hvdtrain.tensorflow as htf


@pytest.fixture
def precision_policy():
    yield htf.set_precision
    keras.mixed_precision.set_dtype_policy("float32")


def data(n=96, seed=0):
    rng = np.random.RandomState(seed)
    x = rng.randn(n, 6).astype(np.float32)
    return x, (x[:, :2].sum(1) > 0).astype(np.int64)


def build(precision, set_precision):
    set_precision(precision)
    keras.utils.set_random_seed(0)
    return keras.Sequential([keras.Input((6,)), keras.layers.Dense(16, activation="relu"), keras.layers.Dense(2)])


LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


@pytest.mark.parametrize("precision", ["bf16-mixed", "16-mixed"])
def test_fit_and_trainer_train_in_mixed_precision(backend, precision_policy, precision):
    model = build(precision, precision_policy)
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss=LOSS, metrics=["accuracy"])
    history = htf.fit(model, *data(), epochs=6, batch_size=16, precision=precision, progress=False,
                      grad_clip_norm=5.0, verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0]
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer) == (precision == "16-mixed")
    trainer = htf.Trainer(build(precision, precision_policy), keras.optimizers.SGD(0.1), LOSS, data(),
                          val_data=data(48, 1), epochs=6, batch_size=16, precision=precision, progress=False,
                          metrics={"accuracy": htf.accuracy}, backward_passes_per_step=2)
    logs = trainer.fit()
    assert logs[-1]["loss"] < logs[0]["loss"] and logs[-1]["val_accuracy"] > 0.7


def test_a_model_built_in_float32_is_refused_with_the_fix(backend):
    keras.mixed_precision.set_dtype_policy("float32")
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(2)])
    with pytest.raises(ValueError, match=r"computes in float32: call hvdtrain.tensorflow.set_precision\('16-mixed'\)"):
        htf.Trainer(model, keras.optimizers.SGD(0.1), LOSS, data(), precision="16-mixed")
