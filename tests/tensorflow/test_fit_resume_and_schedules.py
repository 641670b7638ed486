"""Exact mid-epoch resume in ``fit``, and Keras LR schedules under hvdtrain's scaling and warmup, in one process."""
from __future__ import annotations

import logging
import math

import keras
import numpy as np
import pytest
import tensorflow as tf

import hvdtrain.tensorflow as htf
from hvdtrain.callbacks import Callback, LearningRateSchedule, LearningRateWarmup, Order
from hvdtrain.core.checkpoint import CheckpointManager
from tests.tensorflow.test_trainer_and_fit import Crash, Record, data, loss, model, weights

STEPS = 8  # 120 samples, 16 per step


class LrRecorder(Callback):
    """The LR each batch trains with (read after the LR callback), and the LR when training ends."""

    order = Order.LEARNING_RATE + 1

    def __init__(self):
        self.lrs, self.final = [], None

    def on_batch_begin(self, ctx):
        self.lrs.append(ctx.adapter.get_learning_rates(ctx.optimizer)[0])

    def on_train_end(self, ctx):
        self.final = ctx.adapter.get_learning_rates(ctx.optimizer)[0]


def cosine(step, initial=0.1, decay_steps=3 * STEPS):
    return initial * 0.5 * (1 + math.cos(math.pi * min(step, decay_steps) / decay_steps))


def schedule():
    return keras.optimizers.schedules.CosineDecay(0.1, decay_steps=3 * STEPS)


def warmup_and_halving():
    """Warmup over the first epoch from a quarter (no 1/size start in one process), then x0.5 from epoch 2."""
    return LearningRateSchedule(lambda epoch: 0.5 if epoch >= 2 else 1.0, warmup_epochs=1, warmup_start_factor=0.25)


def train(api, directory, callbacks=(), seed=0, learning_rate=0.01, x=None, **kwargs):
    """Train 3 epochs with ``fit`` or the Trainer; returns the model and what ``fit`` returned."""
    m = model(seed)
    optimizer = keras.optimizers.SGD(learning_rate, momentum=0.5)
    common = {"batch_size": 16, "epochs": 3, "seed": 3, "callbacks": list(callbacks), "checkpoint_dir": directory,
              "checkpoint_every_n_steps": 5, "progress": False, **kwargs}
    if api == "trainer":
        return m, htf.Trainer(m, optimizer, loss(), train_data=data(), val_data=data(40, 1), **common).fit()
    m.compile(optimizer=optimizer, loss=loss(), metrics=["accuracy"])
    inputs = data() if x is None else (x, None)
    return m, htf.fit(m, *inputs, validation_data=data(40, 1), verbose=0, **common)


def crash_then_resume(api, tmp_path, make_callbacks=lambda: [], **kwargs):
    """A reference run, a run that dies at step 13 (after the checkpoint at step 10, mid-epoch 2), and its resume."""
    reference = train(api, tmp_path / "ref", make_callbacks(), **kwargs)
    with pytest.raises(KeyboardInterrupt):
        train(api, tmp_path / "run", [*make_callbacks(), Crash(13)], **kwargs)
    saved = CheckpointManager(tmp_path / "run").checkpoints()[-1]
    assert (saved.epoch, saved.global_step) == (1, 10)
    return reference, saved, make_callbacks


def test_fit_resumes_mid_epoch_exactly_after_a_crash(backend, tmp_path):
    (reference, ref_history), _, _ = crash_then_resume("fit", tmp_path)
    record = Record()
    resumed, history = train("fit", tmp_path / "run", [record], seed=99, resume=True)  # other init: restored
    assert record.batches[0] == (1, 2, 11, STEPS), "the epoch continues at its third batch, step 11"
    assert record.batches[-1] == (2, STEPS - 1, 3 * STEPS, STEPS)
    assert len(record.batches) == 3 * STEPS - 10
    np.testing.assert_allclose(weights(resumed), weights(reference), atol=1e-6)
    assert history.epoch == [1, 2], "the rest of epoch 1 (its own model.fit call), then epoch 2"
    assert history.history["val_loss"] == pytest.approx(ref_history.history["val_loss"][1:])


def test_fit_on_a_dataset_resumes_mid_epoch_by_skipping_the_batches_done(backend, tmp_path):
    dataset = tf.data.Dataset.from_tensor_slices(data()).batch(16)  # one pass per epoch, the same order each time
    (reference, _), _, _ = crash_then_resume("fit", tmp_path, x=dataset)
    record = Record()
    resumed, history = train("fit", tmp_path / "run", [record], seed=99, resume=True, x=dataset)
    assert record.batches[0][:3] == (1, 2, 11)
    np.testing.assert_allclose(weights(resumed), weights(reference), atol=1e-6)
    assert history.epoch == [1, 2]


def test_fit_resumed_after_an_epochs_last_batch_goes_on_to_the_next_epoch(backend, tmp_path, caplog):
    reference, _ = train("fit", tmp_path / "ref", checkpoint_every_n_steps=STEPS, keep_last=10)
    # The step checkpoint after epoch 0's last batch, as if the run died before its end-of-epoch checkpoint.
    after_last_batch = CheckpointManager(tmp_path / "ref").directory / "ckpt-epoch0000-step00000008.ckpt"
    with caplog.at_level(logging.WARNING, logger="hvdtrain"):
        resumed, history = train("fit", tmp_path / "run", resume=after_last_batch, checkpoint_every_n_steps=STEPS)
    assert "written after the last batch of epoch 1" in caplog.text
    assert history.epoch == [1, 2]
    np.testing.assert_allclose(weights(resumed), weights(reference), atol=1e-6)


@pytest.mark.parametrize("api", ["fit", "trainer"])
def test_a_keras_schedule_gets_the_warmup_and_multiplier_on_top_and_resumes_exactly(backend, tmp_path, api):
    recorders = []

    def callbacks():
        recorders.append(LrRecorder())
        return [warmup_and_halving(), recorders[-1]]

    (reference, _), _, _ = crash_then_resume(api, tmp_path, callbacks, learning_rate=schedule())
    expected = []
    for step in range(3 * STEPS):
        epoch = step // STEPS + (step % STEPS) / STEPS
        expected.append(cosine(step) * (0.25 + 0.75 * epoch if epoch < 1 else 1.0) * (0.5 if epoch >= 2 else 1.0))
    assert recorders[0].lrs == pytest.approx(expected, rel=1e-5)

    resumed, _ = train(api, tmp_path / "run", callbacks(), seed=99, learning_rate=schedule(), resume=True)
    assert recorders[-1].lrs == pytest.approx(recorders[0].lrs[10:], rel=1e-6), "every step after the resume"
    assert recorders[-1].final == pytest.approx(recorders[0].final, rel=1e-6)
    np.testing.assert_allclose(weights(resumed), weights(reference), atol=1e-6)


def test_distributed_optimizer_wraps_a_schedule_for_the_multiplier_and_keeps_the_checkpointed_state(backend):
    plain = keras.optimizers.SGD(schedule())
    plain.build(model().trainable_variables)
    optimizer = htf.DistributedOptimizer(keras.optimizers.SGD(schedule()))
    optimizer.build(model().trainable_variables)
    wrapped = optimizer._learning_rate
    assert isinstance(wrapped, htf.ScaledSchedule) and wrapped.factor == 1.0  # one worker: scaled by 1
    assert len(optimizer.variables) == len(plain.variables), "the multiplier is not optimizer state"
    wrapped.set_multiplier(0.5)
    assert float(optimizer.learning_rate) == pytest.approx(0.05)


def test_unsupported_learning_rates_fail_with_the_fix(backend, tmp_path):
    m = model()
    m.compile(optimizer=keras.optimizers.SGD(schedule()), loss=loss())
    with pytest.raises(ValueError, match=r"lr=0.1 sets a float learning rate, but SGD's is a schedule: leave lr out"):
        htf.fit(m, *data(), epochs=1, lr=0.1, verbose=0)

    m = model()
    m.compile(optimizer=keras.optimizers.SGD(lambda: 0.01), loss=loss())
    with pytest.raises(TypeError, match=r"learning rate is function, which hvdtrain's learning-rate warmup"):
        htf.fit(m, *data(), epochs=1, warmup_epochs=1, verbose=0)

    m = model()  # your own model.fit with the bridge: the optimizer was not converted, so its schedule is bare
    m.compile(optimizer=keras.optimizers.SGD(schedule()), loss=loss())
    with pytest.raises(TypeError, match=r"convert the optimizer with hvdtrain\.tensorflow\.DistributedOptimizer"):
        m.fit(*data(), epochs=1, verbose=0, callbacks=[htf.KerasBridge([LearningRateWarmup(1, 0.5)])])
