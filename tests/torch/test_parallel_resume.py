"""Kill-and-resume under real multi-process jobs: the resumed run ends where an uninterrupted one does."""
from __future__ import annotations

from pathlib import Path

import pytest

from hvdtrain.core.checkpoint import CheckpointManager
from tests.launch import results, run_workers

TRAIN = Path(__file__).parent / "workers" / "train_worker.py"
pytestmark = pytest.mark.parallel


@pytest.mark.parametrize(("launcher", "sharding"),
                         [("horovodrun", []), ("mpirun", []), ("horovodrun", ["--shard", "2"])],
                         ids=["horovodrun", "mpirun", "horovodrun-sharded"])
def test_sigkill_then_resume_matches_uninterrupted_run(tmp_path, launcher, sharding):
    args = ["--epochs", "3", "--every-n-steps", "4", *sharding]
    reference = results(run_workers(TRAIN, [*args, "--checkpoint-dir", str(tmp_path / "ref")],
                                    launcher=launcher))

    crashed = run_workers(TRAIN, [*args, "--checkpoint-dir", str(tmp_path / "run"), "--die-at-step", "14"],
                          launcher=launcher, check=False)
    assert crashed.returncode != 0
    saved = CheckpointManager(tmp_path / "run").checkpoints()
    assert saved and saved[-1].global_step == 12  # mid-epoch 2 (10 steps per epoch)

    resumed = run_workers(TRAIN, [*args, "--checkpoint-dir", str(tmp_path / "run"), "--resume"],
                          launcher=launcher)
    ranks = results(resumed)
    assert "resumed from" in resumed.stdout and "at epoch 1, step 12 (batch 2 of the epoch)" in resumed.stdout
    for rank in (0, 1):
        assert ranks[rank]["resumed_from"].endswith("ckpt-epoch0001-step00000012.ckpt")
        assert ranks[rank]["global_step"] == reference[rank]["global_step"] == 30
        assert ranks[rank]["params"] == pytest.approx(reference[rank]["params"], abs=1e-6)
    # Validation metrics are exact; the resumed epoch's train loss averages only the batches after the resume.
    assert [h["val_loss"] for h in ranks[0]["history"]] == pytest.approx(
        [h["val_loss"] for h in reference[0]["history"]])


def test_sigkill_then_resume_with_onecycle_lr_continues_the_schedule_exactly(tmp_path):
    args = ["--epochs", "3", "--every-n-steps", "4", "--onecycle", "--warmup-epochs", "1"]
    reference = results(run_workers(TRAIN, [*args, "--checkpoint-dir", str(tmp_path / "ref")], timeout=180))
    crashed = run_workers(TRAIN, [*args, "--checkpoint-dir", str(tmp_path / "run"), "--die-at-step", "14"],
                          check=False, timeout=180)
    assert crashed.returncode != 0
    ranks = results(run_workers(TRAIN, [*args, "--checkpoint-dir", str(tmp_path / "run"), "--resume"], timeout=180))
    for rank in (0, 1):
        assert ranks[rank]["resumed_from"].endswith("ckpt-epoch0001-step00000012.ckpt")
        assert ranks[rank]["params"] == pytest.approx(reference[rank]["params"], abs=1e-6)
        assert ranks[rank]["lrs"] == pytest.approx(reference[rank]["lrs"][12:], rel=1e-9)  # LR of every step after
        assert ranks[rank]["final_lr"] == pytest.approx(reference[rank]["final_lr"], rel=1e-9)
    lrs = reference[0]["lrs"]
    assert lrs[0] == pytest.approx(0.02 / 25)  # OneCycleLR's start x 2 workers x warmup's 1/2 at step 0
    assert max(lrs) == pytest.approx(2 * 0.02, rel=0.05)  # the peak, scaled by the 2 workers


def test_truncated_newest_checkpoint_falls_back_to_previous(tmp_path):
    run_workers(TRAIN, ["--epochs", "2", "--checkpoint-dir", str(tmp_path)])
    newest = CheckpointManager(tmp_path).checkpoints()[-1].path
    newest.write_bytes(newest.read_bytes()[:-100])

    resumed = run_workers(TRAIN, ["--epochs", "2", "--checkpoint-dir", str(tmp_path), "--resume"])
    assert f"{newest} is truncated" in resumed.stdout + resumed.stderr
    assert "falling back to the previous checkpoint" in resumed.stdout + resumed.stderr
    assert "at epoch 1, step 10" in resumed.stdout


def test_resume_on_fewer_workers_reshards_or_refuses_when_asked(tmp_path):
    run_workers(TRAIN, ["--epochs", "1", "--checkpoint-dir", str(tmp_path)])

    refused = run_workers(TRAIN, ["--epochs", "2", "--checkpoint-dir", str(tmp_path), "--strict-world-size"],
                          np=1, check=False)
    assert refused.returncode != 0
    assert "was written by 2 data-parallel replica(s) but this job has 1. Relaunch with -np 2" in refused.stderr

    resumed = run_workers(TRAIN, ["--epochs", "2", "--checkpoint-dir", str(tmp_path), "--resume"], np=1)
    assert "written by 2 data-parallel replica(s), resuming on 1: re-sharding the data" in resumed.stdout
    single = results(resumed)[0]
    assert single["epoch"] == 2 and single["global_step"] == 10 + 19  # epoch 2 alone: ceil(300 / 16) steps
    assert single["lrs"] == pytest.approx([0.01] * 19), "LR scaled for 2 workers is rescaled for 1"
