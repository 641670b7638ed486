"""The two adapters name the same concepts alike, and their twins behave alike."""
from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
import torch

import hvdtrain.tensorflow as htf
import hvdtrain.torch as ht

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
