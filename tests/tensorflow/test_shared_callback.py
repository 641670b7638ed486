"""One user-written callback class runs unchanged under PyTorch, the TF custom loop and Keras fit."""
from __future__ import annotations

import math
from pathlib import Path

import pytest

from tests.launch import results, run_workers

WORKER = Path(__file__).parent / "workers" / "shared_callback_worker.py"
STEPS = math.ceil(300 / 32)
pytestmark = pytest.mark.parallel


def test_same_callback_sees_the_same_training_under_every_adapter(tmp_path):
    torch_ranks = results(run_workers(WORKER, ["--framework", "torch", "--out-dir", str(tmp_path)], timeout=240))
    tf_ranks = results(run_workers(WORKER, ["--framework", "tensorflow", "--out-dir", str(tmp_path)], timeout=240))

    expected_rank0 = [
        ["train_begin", 0, 2, 4, 0.2],  # the LR as the optimizer wrapper scaled it (0.1 x 2 workers)
        ["epoch_begin", 0, STEPS, 0],
        ["epoch_end", 0, STEPS, 300, STEPS, ["accuracy", "loss", "val_accuracy", "val_loss"], 0.2],
        ["epoch_begin", 1, STEPS, 0],
        ["epoch_end", 1, 2 * STEPS, 300, 2 * STEPS, ["accuracy", "loss", "val_accuracy", "val_loss"], 0.1],
        ["train_end", 2, "probe: enough"],  # the requested stop, agreed by all ranks
    ]
    for name, ranks in (("torch", torch_ranks), ("tensorflow", tf_ranks), ("keras", tf_ranks)):
        assert ranks[0][name] == expected_rank0, name
        assert ranks[1][name] == [[*expected_rank0[0][:1], 1, *expected_rank0[0][2:]], *expected_rank0[1:-1]], \
            f"{name}: rank 1 sees the same run, and rank_zero_only kept train_end on rank 0"
        assert ranks[0][f"{name}_finite"] and ranks[1][f"{name}_finite"]
    written = sorted(p.name for p in tmp_path.iterdir())
    assert written == ["probe-tensorflow-rank0.txt", "probe-torch-rank0.txt"]
    assert (tmp_path / "probe-torch-rank0.txt").read_text() == "probe: enough"
