"""The two adapters name the same concepts alike, and their twins behave alike."""
from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf
import torch

import hvdtrain.tensorflow as htf
import hvdtrain.torch as ht
from hvdtrain.callbacks import Callback

SHARED = {"DistributedOptimizer", "HorovodBackend", "SerialBackend", "Trainer", "TrainingOptions", "accuracy",
          "broadcast_state", "init", "is_distributed"}
SCORES = np.array([[0.1, 0.9, 0.0], [0.8, 0.1, 0.1], [0.2, 0.3, 0.5], [0.3, 0.3, 0.4]], np.float32)
LABELS = np.array([1, 0, 1, 2])


def test_both_adapters_export_the_shared_concepts_under_one_name():
    assert SHARED <= set(ht.__all__) and SHARED <= set(htf.__all__)


@pytest.mark.parametrize("labels", [LABELS, LABELS.reshape(-1, 1), np.eye(3, dtype=np.float32)[LABELS]],
                         ids=["indices", "column", "one-hot"])
def test_accuracy_takes_outputs_then_targets_in_both_adapters_and_tolerates_keras_order(labels):
    for accuracy, tensor in ((ht.accuracy, torch.from_numpy), (htf.accuracy, tf.constant)):
        assert float(accuracy(tensor(SCORES), tensor(labels))) == pytest.approx(0.75)
        assert float(accuracy(tensor(labels), tensor(SCORES))) == pytest.approx(0.75)


class Decisions(Callback):
    """What a loop driver decided at each batch and epoch end: counters, updates, samples."""

    def __init__(self):
        self.seen = []

    def on_batch_end(self, ctx):
        self.seen.append(("batch", ctx.epoch, ctx.batch_index, ctx.global_step, ctx.outcome.updated,
                          ctx.samples_seen_in_epoch, ctx.sample_count))

    def on_epoch_end(self, ctx):
        self.seen.append(("epoch", ctx.epoch, ctx.global_step, ctx.samples_seen_in_epoch, ctx.sample_count))


def test_both_loop_drivers_make_the_same_decisions_for_the_same_batches(tmp_path):
    # EpochLoop (both Trainers) and KerasBridge (fit): 100 samples in batches of 16, the last one short.
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(100, 4)).astype(np.float32), rng.integers(0, 2, 100)
    common = {"batch_size": 16, "epochs": 2, "progress": False, "checkpoint_dir": None}
    torch_seen, keras_seen = Decisions(), Decisions()
    module = torch.nn.Linear(4, 2)
    ht.Trainer(module, torch.optim.SGD(module.parameters(), lr=0.1), torch.nn.functional.cross_entropy,
               (torch.from_numpy(x), torch.from_numpy(y)), callbacks=[torch_seen], backend=ht.SerialBackend(),
               **common).fit()
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss=keras.losses.SparseCategoricalCrossentropy(True))
    htf.fit(model, x, y, callbacks=[keras_seen], backend=htf.SerialBackend(), verbose=0, **common)
    assert len(torch_seen.seen) == 2 * 7 + 2
    assert keras_seen.seen == torch_seen.seen
