"""The TF Trainer and the Keras fit bridge in one process: hooks, checkpoints, resume, errors."""
from __future__ import annotations

import keras
import numpy as np
import pytest

import hvdtrain.tensorflow as htf
from hvdtrain.callbacks import Callback, ModelCheckpoint, default_callbacks
from hvdtrain.core.checkpoint import CheckpointError, CheckpointManager


class Crash(Callback):
    """Raises at a global step, like a worker dying mid-epoch."""

    def __init__(self, step):
        self.step = step

    def on_batch_end(self, ctx):
        if ctx.global_step == self.step:
            raise KeyboardInterrupt("simulated crash")


class Record(Callback):
    def __init__(self):
        self.batches, self.epochs = [], []

    def on_batch_end(self, ctx):
        self.batches.append((ctx.epoch, ctx.batch_index, ctx.global_step, ctx.steps_per_epoch))

    def on_epoch_end(self, ctx):
        self.epochs.append(dict(ctx.logs))


def data(n=120, seed=0):
    rng = np.random.RandomState(seed)
    x = rng.randn(n, 5).astype(np.float32)
    return x, (x[:, :2].sum(1) > 0).astype(np.int64)


def model(seed=0):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((5,)), keras.layers.Dense(8, activation="relu"),
                             keras.layers.Dropout(0.3), keras.layers.Dense(2)])


def loss():
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def trainer(tmp_path, callbacks=(), resume=False, epochs=3, seed=0, **kwargs):
    return htf.Trainer(model(seed), keras.optimizers.Adam(0.01), loss(), train_data=data(), val_data=data(40, 1),
                       batch_size=16, epochs=epochs, metrics={"accuracy": htf.accuracy}, seed=3,
                       callbacks=callbacks, checkpoint_dir=tmp_path, resume=resume, progress=False, **kwargs)


def weights(m):
    return np.concatenate([w.ravel() for w in m.get_weights()])


def test_trainer_logs_validation_metrics_and_counts_steps(backend, tmp_path):
    record = Record()
    history = trainer(tmp_path, [record], epochs=2).fit()
    assert [sorted(h) for h in history] == [["accuracy", "loss", "val_accuracy", "val_loss"]] * 2
    assert record.batches[-1] == (1, 7, 16, 8)  # 120 samples / 16 per step = 8 steps per epoch
    assert len(CheckpointManager(tmp_path).checkpoints()) == 2


def test_trainer_resumes_mid_epoch_exactly_after_a_crash(backend, tmp_path):
    reference = trainer(tmp_path / "ref", checkpoint_every_n_steps=5)
    reference.fit()
    crashed = trainer(tmp_path / "run", [Crash(13)], checkpoint_every_n_steps=5)
    with pytest.raises(KeyboardInterrupt):
        crashed.fit()
    assert CheckpointManager(tmp_path / "run").checkpoints()[-1].global_step == 10  # mid-epoch 2
    resumed = trainer(tmp_path / "run", resume=True, seed=99, checkpoint_every_n_steps=5)  # other init: restored
    history = resumed.fit()
    assert resumed.ctx.resumed_from.endswith("ckpt-epoch0001-step00000010.ckpt")
    np.testing.assert_allclose(weights(resumed.model), weights(reference.model), atol=1e-6)
    assert [h["val_loss"] for h in history] == pytest.approx([h["val_loss"] for h in reference.ctx.history])


def test_a_truncated_checkpoint_is_refused_with_a_clear_message(backend, tmp_path):
    trainer(tmp_path, epochs=2).fit()
    newest = CheckpointManager(tmp_path).checkpoints()[-1].path
    newest.write_bytes(newest.read_bytes()[:-50])
    with pytest.raises(CheckpointError, match=r"is truncated: its header promises \d+ payload bytes"):
        trainer(tmp_path, resume=newest).fit()
    fallback = trainer(tmp_path, resume=True)
    fallback.fit()
    assert fallback.ctx.resumed_from.endswith("ckpt-epoch0001-step00000008.ckpt"), "the previous good one"


def test_trainer_rejects_unbuilt_models_and_bad_data(backend):
    with pytest.raises(ValueError, match=r"is not built: give it a keras\.Input"):
        htf.Trainer(keras.Sequential([keras.layers.Dense(2)]), keras.optimizers.SGD(), loss(), data())
    with pytest.raises(TypeError, match=r"train_data must be a pair \(x, y\)"):
        htf.Trainer(model(), keras.optimizers.SGD(), loss(), data()[0])
    with pytest.raises(ValueError, match="resume=True needs checkpoint_dir"):
        htf.Trainer(model(), keras.optimizers.SGD(), loss(), data(), resume=True)
    with pytest.raises(ValueError, match="shard_optimizer_state=1 is PyTorch-only"):
        htf.Trainer(model(), keras.optimizers.SGD(), loss(), data(), shard_optimizer_state=1)
    with pytest.raises(ValueError, match="shard_optimizer_state=2 is PyTorch-only"):
        htf.fit(compiled(), *data(), shard_optimizer_state=2)


def compiled(seed=0):
    m = model(seed)
    m.compile(optimizer=keras.optimizers.Adam(0.01), loss=loss(), metrics=["accuracy"])
    return m


def test_fit_runs_hvdtrain_and_keras_callbacks_with_averaged_logs(backend, tmp_path):
    record, keras_epochs = Record(), []
    lambda_cb = keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: keras_epochs.append(dict(logs)))
    history = htf.fit(compiled(), *data(), validation_data=data(40, 1), batch_size=16, epochs=2, warmup_epochs=1,
                      callbacks=[record, lambda_cb], checkpoint_dir=tmp_path, log_dir=tmp_path, progress=False,
                      verbose=0)
    assert record.batches[-1] == (1, 7, 16, 8)
    assert {"loss", "accuracy", "val_loss", "val_accuracy", "lr"} <= set(keras_epochs[-1])
    assert history.history["lr"] == pytest.approx([0.01, 0.01])
    assert len((tmp_path / "metrics.csv").read_text().splitlines()) == 3
    assert [c.epoch for c in CheckpointManager(tmp_path).checkpoints()] == [1, 2]


def test_fit_resumes_at_the_epoch_of_the_checkpoint(backend, tmp_path):
    htf.fit(compiled(), *data(), batch_size=16, epochs=2, checkpoint_dir=tmp_path, progress=False, verbose=0)
    record = Record()
    history = htf.fit(compiled(seed=5), *data(), batch_size=16, epochs=3, checkpoint_dir=tmp_path, resume=True,
                      callbacks=[record], progress=False, verbose=0)
    assert history.epoch == [2], "only the third epoch runs"
    assert record.batches[0] == (2, 0, 17, 8)


def test_keras_bridge_with_a_plain_model_fit_call(backend, tmp_path):
    m = compiled()
    m.optimizer = htf.DistributedOptimizer(m.optimizer)
    x, y = data()
    m.fit(x, y, batch_size=16, epochs=2, verbose=0, callbacks=[htf.KerasBridge([ModelCheckpoint(tmp_path)])])
    options = htf.TrainingOptions(checkpoint_dir=tmp_path, resume=True, progress=False)
    bridge = htf.KerasBridge(default_callbacks(options, has_val=False))
    history = compiled(seed=1).fit(x, y, batch_size=16, epochs=3, verbose=0, callbacks=[bridge])
    assert history.epoch == [2] and bridge.ctx.resumed_from is not None


def test_fit_requires_a_compiled_model(backend):
    with pytest.raises(ValueError, match="compile the model first"):
        htf.fit(model(), *data(), epochs=1)
