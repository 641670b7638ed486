"""The TF Trainer on tf.data input in one process: steps, exact validation, mid-epoch resume, errors."""
from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

import hvdtrain.tensorflow as htf
from hvdtrain.core.checkpoint import CheckpointManager
from tests.tensorflow.test_trainer_and_fit import Crash, Record, data, loss, model, weights


def dataset(n=120, seed=0, batch=16):
    return tf.data.Dataset.from_tensor_slices(data(n, seed)).batch(batch)


def trainer(tmp_path, train=None, callbacks=(), resume=False, epochs=3, seed=0, **kwargs):
    return htf.Trainer(model(seed), keras.optimizers.Adam(0.01), loss(),
                       train_data=dataset() if train is None else train, val_data=dataset(40, 1, batch=7),
                       epochs=epochs, metrics={"accuracy": htf.accuracy}, callbacks=callbacks,
                       checkpoint_dir=tmp_path, resume=resume, progress=False, **kwargs)


def test_trainer_takes_a_dataset_and_validates_it_exactly(backend, tmp_path):
    record = Record()
    t = trainer(tmp_path, callbacks=[record], epochs=2)
    history = t.fit()
    assert [sorted(h) for h in history] == [["accuracy", "loss", "val_accuracy", "val_loss"]] * 2
    assert record.batches[-1] == (1, 7, 16, 8)  # 120 samples in batches of 16: 8 steps per epoch
    # Uneven batches of 7 are weighted by their samples: the same as the arrays evaluated in one piece.
    arrays = t.evaluate(data(40, 1))
    assert arrays["val_loss"] == pytest.approx(history[-1]["val_loss"], abs=1e-6)
    assert arrays["val_accuracy"] == pytest.approx(history[-1]["val_accuracy"], abs=1e-6)


def test_trainer_resumes_a_dataset_mid_epoch_exactly_after_a_crash(backend, tmp_path):
    def shuffled():  # a seeded shuffle without reshuffling: the same order every time it is iterated
        samples = tf.data.Dataset.from_tensor_slices(data())
        return samples.shuffle(120, seed=5, reshuffle_each_iteration=False).batch(16)

    reference = trainer(tmp_path / "ref", shuffled(), checkpoint_every_n_steps=5)
    reference.fit()
    crashed = trainer(tmp_path / "run", shuffled(), [Crash(13)], checkpoint_every_n_steps=5)
    with pytest.raises(KeyboardInterrupt):
        crashed.fit()
    assert CheckpointManager(tmp_path / "run").checkpoints()[-1].global_step == 10  # epoch 1, after batch 2
    record = Record()
    resumed = trainer(tmp_path / "run", shuffled(), [record], resume=True, seed=99, checkpoint_every_n_steps=5)
    history = resumed.fit()
    assert record.batches[0] == (1, 2, 11, 8), "resumed at the batch after the checkpoint"
    np.testing.assert_allclose(weights(resumed.model), weights(reference.model), atol=1e-6)
    assert [h["val_loss"] for h in history] == pytest.approx([h["val_loss"] for h in reference.ctx.history])


def test_a_dataset_of_unknown_length_needs_steps_per_epoch(backend, tmp_path):
    unknown = dataset().filter(lambda x, y: True)
    with pytest.raises(ValueError, match=r"length is unknown on rank\(s\) \[0\]: pass steps_per_epoch="):
        trainer(tmp_path, unknown)
    record = Record()
    trainer(tmp_path, unknown, [record], epochs=2, steps_per_epoch=5).fit()
    assert record.batches[-1] == (1, 4, 10, 5)
    with pytest.raises(RuntimeError, match="dataset ended after 8 of the agreed 9 batches per epoch"):
        trainer(tmp_path / "long", unknown, steps_per_epoch=9).fit()


def test_bad_dataset_arguments_are_named(backend, tmp_path):
    with pytest.raises(ValueError, match="steps_per_epoch=9 but rank 0's train_data has only 8 batches"):
        trainer(tmp_path, steps_per_epoch=9)
    with pytest.raises(ValueError, match=r"steps_per_epoch is for a tf\.data\.Dataset train_data"):
        trainer(tmp_path, data(), steps_per_epoch=4)
    with pytest.raises(TypeError, match=r"train_data must yield \(x, y\) batches"):
        trainer(tmp_path, tf.data.Dataset.from_tensor_slices(data()[0]).batch(16))
    with pytest.raises(TypeError, match="yields scalars: batch it first"):
        trainer(tmp_path, tf.data.Dataset.from_tensor_slices(data()[1:] * 2))
    with pytest.raises(ValueError, match=r"val_data's batches do not match train_data's"):
        htf.Trainer(model(), keras.optimizers.SGD(), loss(), dataset(),
                    val_data=dataset().map(lambda x, y: (x, tf.cast(y, tf.int32))), progress=False)
