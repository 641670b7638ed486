"""Kill-and-resume under real 2-worker TensorFlow jobs: the resumed run ends where an uninterrupted one does."""
from __future__ import annotations

import math
import shutil
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


# One launcher here (CI time): the PyTorch resume test runs both, and resume does not depend on it.
@pytest.mark.parametrize("launcher", ["mpirun"])
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
    assert "was written by 2 data-parallel replica(s) but this job has 1. Relaunch with -np 2" in refused.stderr

    resumed = run_workers(TRAIN, ["--epochs", "2", "--checkpoint-dir", str(tmp_path), "--resume"], np=1,
                          timeout=TIMEOUT)
    assert "written by 2 data-parallel replica(s), resuming on 1: re-sharding the data" in resumed.stdout
    single = results(resumed)[0]
    assert single["global_step"] == 10 + 19  # epoch 2 alone: ceil(300 / 16) steps
    assert single["lrs"] == pytest.approx([0.01] * 19), "the LR scaled for 2 workers is rescaled for 1"


FIT_SCHEDULE = Path(__file__).parent / "workers" / "fit_schedule_worker.py"


def test_keras_fit_killed_mid_epoch_resumes_its_keras_schedule_and_weights_exactly(tmp_path):
    """2 workers, a Keras CosineDecay under warmup: every rank is SIGKILLed at step 14, after the checkpoint at
    step 12 (mid-epoch 2); the resumed run's weights and LRs are the uninterrupted run's."""
    args = ["--epochs", "3", "--every-n-steps", "4", "--warmup-epochs", "1"]
    crashed = run_workers(FIT_SCHEDULE, [*args, "--reference-dir", str(tmp_path / "ref"), "--checkpoint-dir",
                                         str(tmp_path / "run"), "--die-at-step", "14"], check=False, timeout=120)
    assert crashed.returncode != 0
    reference = results(crashed)  # the uninterrupted run, trained and reported before the killed one
    shutil.copytree(tmp_path / "run", tmp_path / "one")
    resumed = run_workers(FIT_SCHEDULE, [*args, "--checkpoint-dir", str(tmp_path / "run"), "--resume"], timeout=120)
    assert "at epoch 1, step 12 (batch 2 of the epoch)" in resumed.stdout
    ranks = results(resumed)
    steps = 30  # 300 samples, 2 x 16 per step: 10 steps per epoch
    expected_lrs = [0.05 * 0.5 * (1 + math.cos(math.pi * k / steps)) * 2 * min(0.5 + 0.5 * k / 10, 1.0)
                    for k in range(steps)]  # the schedule x 2 workers x warmup from 1/2 over the first epoch
    for rank in (0, 1):
        assert ranks[rank]["resumed_from"].endswith("ckpt-epoch0001-step00000012.ckpt")
        assert ranks[rank]["steps"][0][:3] == [1, 2, 13], "the epoch continues at its third batch"
        assert ranks[rank]["steps"] == reference[rank]["steps"][12:], "epoch, batch, step and samples seen"
        assert ranks[rank]["global_step"] == reference[rank]["global_step"] == steps
        assert reference[rank]["lrs"] == pytest.approx(expected_lrs, rel=1e-5)
        assert ranks[rank]["lrs"] == pytest.approx(reference[rank]["lrs"][12:], rel=1e-6)
        assert ranks[rank]["final_lr"] == pytest.approx(reference[rank]["final_lr"], rel=1e-6)
        assert ranks[rank]["params"] == pytest.approx(reference[rank]["params"], abs=1e-6)
    assert [h["val_loss"] for h in ranks[0]["history"]] == pytest.approx(
        [h["val_loss"] for h in reference[0]["history"]])

    # The same checkpoint resumed on 1 worker: the rest of epoch 2 re-sharded, the schedule scaled by 1, not 2.
    single = results(run_workers(FIT_SCHEDULE, [*args, "--checkpoint-dir", str(tmp_path / "one"), "--resume"], np=1,
                                 timeout=120))[0]
    rest_of_epoch = [step for step in single["steps"] if step[0] == 1]
    assert len(rest_of_epoch) == 15 and rest_of_epoch[-1][3] == 300  # (300 - 2 x 32) samples, 16 per step
    assert single["global_step"] == 12 + 15 + 19
    assert single["lrs"][0] == pytest.approx(0.05 * 0.5 * (1 + math.cos(math.pi * 12 / steps)), rel=1e-5)
