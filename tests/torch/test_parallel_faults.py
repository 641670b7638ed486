"""Fault cases under real 2-worker PyTorch jobs (docs/reliability.md): each one fails with a clear error on
every rank within a time bound, and leaves the checkpoints as they were."""
from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

import hvdtrain.torch as ht
from hvdtrain.core.checkpoint import CheckpointManager
from hvdtrain.core.checkpoint_io import read_checkpoint
from tests.checkpoint_files import plant_pickle
from tests.launch import rank_errors, run_workers

TRAIN = Path(__file__).parent / "workers" / "train_worker.py"
TIMEOUT = 180
pytestmark = pytest.mark.parallel


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB tmpfs (mounting needs root), unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root; the RLIMIT_FSIZE case covers a full disk without it")
    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)], check=True, timeout=30)
    try:
        yield disk
    finally:
        subprocess.run(["umount", str(disk)], check=True, timeout=30)


@pytest.mark.parametrize(("launcher", "full"), [("horovodrun", "rlimit"), ("mpirun", "tmpfs")])
def test_a_full_disk_while_saving_fails_every_rank_and_keeps_the_previous_checkpoint(tmp_path, request, launcher,
                                                                                     full):
    if full == "tmpfs":
        directory, flag, reason = request.getfixturevalue("small_disk") / "ckpt", "--fill-disk-at-epoch", \
            "[Errno 28] No space left on device"
    else:
        directory, flag, reason = tmp_path / "ckpt", "--fsize-limit-at-epoch", "[Errno 27] File too large"
    proc = run_workers(TRAIN, ["--epochs", "3", "--checkpoint-dir", str(directory), flag, "1", "--expect-error"],
                       launcher=launcher, check=False, timeout=TIMEOUT)

    expected = f"CheckpointError: could not write a checkpoint in {directory}: {reason}"
    for rank, error in rank_errors(proc).items():
        assert error.startswith(expected), f"rank {rank}: {error}"
        assert "the previous checkpoints are untouched" in error
    saved = CheckpointManager(directory).checkpoints()
    assert [(c.epoch, c.global_step) for c in saved] == [(1, 10)], "the end of epoch 0 only"
    state = ht.TorchAdapter(ht.SerialBackend()).deserialize(read_checkpoint(saved[0].path)[1])
    assert state["progress"]["epoch"] == 1
    assert sorted(p.name for p in directory.iterdir()) == [saved[0].path.name], "no partial or temp file"


@pytest.mark.parametrize(("launcher", "flags", "expected"), [
    ("horovodrun", ["--rank1-hidden", "17"],
     "tensor #0 is '0.weight' with shape (16, 10) (float32) on rank 0 but '0.weight' with shape (17, 10) "
     "(float32) on rank 1."),
    ("mpirun", ["--rank1-extra-layer"],
     "tensor #4 is missing on rank 0 but '4.weight' with shape (2, 2) (float32) on rank 1. "
     "Rank 0 has 4 tensors and rank 1 has 6."),
])
def test_ranks_with_different_models_fail_at_the_initial_broadcast_naming_the_tensor(launcher, flags, expected):
    proc = run_workers(TRAIN, ["--epochs", "1", "--expect-error", *flags], launcher=launcher, check=False,
                       timeout=TIMEOUT)
    for rank, error in rank_errors(proc).items():
        assert error.startswith("StateMismatchError: ranks disagree on the model before the initial broadcast: "
                                + expected), f"rank {rank}: {error}"
        assert "Every rank must build the same model" in error


@pytest.mark.parametrize(("launcher", "where", "expected"), [
    ("horovodrun", "payload", "its payload is a torch.save archive (a pickle inside): the format of hvdtrain 0.1.0"),
    ("mpirun", "section", "its tensor section holds objects other than tensors"),
])
def test_a_planted_pickle_checkpoint_is_refused_on_every_rank_and_runs_nothing(tmp_path, launcher, where, expected):
    marker = tmp_path / "pwned"
    planted = plant_pickle(tmp_path / "ckpt", marker, "torch", where=where)
    proc = run_workers(TRAIN, ["--epochs", "2", "--checkpoint-dir", str(tmp_path / "ckpt"), "--resume",
                               "--expect-error"], launcher=launcher, check=False, timeout=TIMEOUT)
    for rank, error in rank_errors(proc).items():
        assert error.startswith(f"CheckpointError: {planted}"), f"rank {rank}: {error}"
        assert expected in error
        if where == "payload":
            assert re.search(rf"`hvdtrain convert-checkpoint {re.escape(str(planted))}`", error)
    assert not marker.exists(), "the command in the planted pickle ran"
    assert [p.name for p in (tmp_path / "ckpt").iterdir()] == [planted.name], "nothing was written over it"
