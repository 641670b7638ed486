"""Fault cases under real 2-worker TensorFlow jobs (docs/reliability.md), through the Trainer and Keras fit:
each one fails with a clear error on every rank within a time bound."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from hvdtrain.core.checkpoint import CheckpointManager
from hvdtrain.core.checkpoint_io import read_checkpoint
from hvdtrain.core.state_codec import decode_state
from tests.checkpoint_files import plant_pickle
from tests.launch import rank_errors, run_workers

TRAIN = Path(__file__).parent / "workers" / "train_worker.py"
TIMEOUT = 240
pytestmark = pytest.mark.parallel


def test_a_full_disk_while_saving_fails_every_rank_and_keeps_the_previous_checkpoint(tmp_path):
    directory = tmp_path / "ckpt"
    proc = run_workers(TRAIN, ["--api", "fit", "--epochs", "3", "--checkpoint-dir", str(directory),
                               "--fsize-limit-at-epoch", "1", "--expect-error"], check=False, timeout=TIMEOUT)
    for rank, error in rank_errors(proc).items():
        assert error.startswith(f"CheckpointError: could not write a checkpoint in {directory}: [Errno 27] File "
                                "too large"), f"rank {rank}: {error}"
    saved = CheckpointManager(directory).checkpoints()
    assert [(c.epoch, c.global_step) for c in saved] == [(1, 10)]
    assert decode_state(read_checkpoint(saved[0].path)[1])["progress"]["epoch"] == 1
    assert sorted(p.name for p in directory.iterdir()) == [saved[0].path.name], "no partial or temp file"


def test_a_dataset_of_unknown_length_on_one_rank_fails_every_rank_alike():
    # The ranks agree first (one allgather of the lengths), then all raise: no rank waits for the others.
    proc = run_workers(TRAIN, ["--api", "fit_dataset", "--rank1-unknown-length", "--epochs", "1", "--expect-error"],
                       check=False, timeout=120)
    errors = rank_errors(proc)
    assert errors[0] == errors[1], errors
    assert errors[0].startswith("ValueError: x's length is unknown on rank(s) [1]: pass steps_per_epoch="), errors


@pytest.mark.parametrize(("launcher", "flags", "expected"), [
    ("horovodrun", ["--api", "trainer", "--rank1-hidden", "17"],
     r"tensor #0 is '[^']*kernel' with shape \(10, 16\) \(float32\) on rank 0 but '[^']*kernel' with shape "
     r"\(10, 17\) \(float32\) on rank 1\."),
    ("mpirun", ["--api", "fit", "--rank1-extra-layer"],
     r"tensor #\d+ is '[^']*' with shape \([\d, ]*\) \(\w+\) on rank 0 but '[^']*dense_2/kernel' with shape "
     r"\(2, 2\) \(float32\) on rank 1\. Rank 0 has \d+ tensors and rank 1 has \d+\."),
])
def test_ranks_with_different_models_fail_at_the_initial_broadcast_naming_the_variable(launcher, flags, expected):
    proc = run_workers(TRAIN, ["--epochs", "1", "--expect-error", *flags], launcher=launcher, check=False,
                       timeout=TIMEOUT)
    for rank, error in rank_errors(proc).items():
        assert error.startswith("StateMismatchError: ranks disagree on the model and optimizer before the initial "
                                "broadcast: "), f"rank {rank}: {error}"
        assert re.search(expected, error), f"rank {rank}: {error}"


@pytest.mark.parametrize(("launcher", "api", "where", "expected"), [
    ("horovodrun", "fit", "payload", "its payload is a Python pickle: the format of hvdtrain 0.1.0"),
    ("mpirun", "trainer", "section", "its array section holds pickled objects"),
])
def test_a_planted_pickle_checkpoint_is_refused_on_every_rank_and_runs_nothing(tmp_path, launcher, api, where,
                                                                                expected):
    marker = tmp_path / "pwned"
    planted = plant_pickle(tmp_path / "ckpt", marker, "tensorflow", where=where)
    proc = run_workers(TRAIN, ["--api", api, "--epochs", "2", "--checkpoint-dir", str(tmp_path / "ckpt"),
                               "--resume", "--expect-error"], launcher=launcher, check=False, timeout=TIMEOUT)
    for rank, error in rank_errors(proc).items():
        assert error.startswith(f"CheckpointError: {planted}"), f"rank {rank}: {error}"
        assert expected in error
        if where == "payload":
            assert f"`hvdtrain convert-checkpoint {planted}`" in error
    assert not marker.exists(), "the command in the planted pickle ran"
    assert [p.name for p in (tmp_path / "ckpt").iterdir()] == [planted.name], "nothing was written over it"
