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


def test_a_keras_schedule_inside_the_loss_scale_optimizer_gets_the_warmup_on_top(backend, precision_policy):
    from hvdtrain.callbacks import LearningRateWarmup
    from tests.tensorflow.test_fit_resume_and_schedules import LrRecorder

    model = build("16-mixed", precision_policy)
    schedule = keras.optimizers.schedules.PiecewiseConstantDecay([6], [0.1, 0.01])
    model.compile(optimizer=keras.optimizers.SGD(schedule), loss=LOSS)
    recorder = LrRecorder()
    htf.fit(model, *data(), epochs=2, batch_size=16, precision="16-mixed", progress=False, verbose=0,
            callbacks=[LearningRateWarmup(1, start_factor=0.5), recorder])
    assert isinstance(model.optimizer.inner_optimizer._learning_rate, htf.ScaledSchedule)
    warmup = [0.5 + 0.5 * step / 6 for step in range(6)] + [1.0] * 6  # 96 samples, 16 per step
    assert recorder.lrs == pytest.approx([(0.1 if step <= 6 else 0.01) * w for step, w in enumerate(warmup)])
