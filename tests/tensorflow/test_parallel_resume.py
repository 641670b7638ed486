"""Kill-and-resume under real 2-worker TensorFlow jobs: the resumed run ends where an uninterrupted one does."""
from __future__ import annotations

from pathlib import Path

import pytest

from hvdtrain.core.checkpoint import CheckpointManager
from tests.launch import results, run_workers

TRAIN = Path(__file__).parent / "workers" / "train_worker.py"
TIMEOUT = 240
pytestmark = pytest.mark.parallel


def _reference_crash_resume(tmp_path: Path, args: list[str], die_at: int, launcher: str):
    reference = results(run_workers(TRAIN, [*args, "--checkpoint-dir", str(tmp_path / "ref")], launcher=launcher,
                                    timeout=TIMEOUT))
    crashed = run_workers(TRAIN, [*args, "--checkpoint-dir", str(tmp_path / "run"), "--die-at-step", str(die_at)],
                          launcher=launcher, check=False, timeout=TIMEOUT)
    assert crashed.returncode != 0
    saved = CheckpointManager(tmp_path / "run").checkpoints()
    resumed = run_workers(TRAIN, [*args, "--checkpoint-dir", str(tmp_path / "run"), "--resume"],
                          launcher=launcher, timeout=TIMEOUT)
    return reference, saved, resumed


@pytest.mark.parametrize("launcher", ["horovodrun", "mpirun"])
def test_trainer_sigkill_mid_epoch_then_resume_matches_uninterrupted_run(tmp_path, launcher):
    args = ["--api", "trainer", "--epochs", "3", "--every-n-steps", "4"]
    reference, saved, resumed = _reference_crash_resume(tmp_path, args, 14, launcher)
    assert saved and saved[-1].global_step == 12  # mid-epoch 2 (10 steps per epoch)
    ranks = results(resumed)
    assert "at epoch 1, step 12 (batch 2 of the epoch)" in resumed.stdout
    for rank in (0, 1):
        assert ranks[rank]["resumed_from"].endswith("ckpt-epoch0001-step00000012.ckpt")
        assert ranks[rank]["global_step"] == reference[rank]["global_step"] == 30
        # Same weights, dropout masks included (the layers' seed-generator state is checkpointed).
        assert ranks[rank]["params"] == pytest.approx(reference[rank]["params"], abs=1e-6)
    assert [h["val_loss"] for h in ranks[0]["history"]] == pytest.approx(
        [h["val_loss"] for h in reference[0]["history"]])


def test_keras_fit_sigkill_then_resume_at_the_epoch_matches_uninterrupted_run(tmp_path):
    args = ["--api", "fit", "--epochs", "3"]
    reference, saved, resumed = _reference_crash_resume(tmp_path, args, 14, "horovodrun")
    assert saved and saved[-1].global_step == 10 and saved[-1].epoch == 1  # the end of epoch 1
    ranks = results(resumed)
    assert "at epoch 1, step 10 (batch 0 of the epoch)" in resumed.stdout
    for rank in (0, 1):
        assert ranks[rank]["global_step"] == reference[rank]["global_step"] == 30
        assert ranks[rank]["params"] == pytest.approx(reference[rank]["params"], abs=1e-6)
        assert len(ranks[rank]["history"]) == 3  # the restored epoch plus the two run after resuming
    assert [h["val_loss"] for h in ranks[0]["history"]] == pytest.approx(
        [h["val_loss"] for h in reference[0]["history"]])


def test_resume_on_fewer_workers_refuses_when_asked_and_reshards_otherwise(tmp_path):
    run_workers(TRAIN, ["--epochs", "1", "--checkpoint-dir", str(tmp_path)], timeout=TIMEOUT)
    refused = run_workers(TRAIN, ["--epochs", "2", "--checkpoint-dir", str(tmp_path), "--strict-world-size"],
                          np=1, check=False, timeout=TIMEOUT)
    assert refused.returncode != 0
    assert "was written by a job of 2 workers but this job has 1. Relaunch with -np 2" in refused.stderr

    resumed = run_workers(TRAIN, ["--epochs", "2", "--checkpoint-dir", str(tmp_path), "--resume"], np=1,
                          timeout=TIMEOUT)
    assert "written by 2 workers, resuming on 1: re-sharding the data" in resumed.stdout
    single = results(resumed)[0]
    assert single["global_step"] == 10 + 19  # epoch 2 alone: ceil(300 / 16) steps
    assert single["lrs"] == pytest.approx([0.01] * 19), "the LR scaled for 2 workers is rescaled for 1"
