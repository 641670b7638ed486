"""A GAN's two optimizers on 2 real workers: the Trainer equals two Horovod optimizers stepped by hand,
resumes exactly after a SIGKILL, and skips a non-finite update on both ranks."""
from __future__ import annotations

from pathlib import Path

import pytest

from hvdtrain.core.checkpoint import CheckpointManager
from tests.launch import results, run_workers

GAN = Path(__file__).parent / "workers" / "gan_worker.py"
pytestmark = pytest.mark.parallel


@pytest.mark.parametrize("args", [["--warmup-epochs", "1", "--clip", "0.05"],
                                  ["--accumulate", "3", "--precision", "16-mixed"]],
                         ids=["warmup-clip", "accumulate-float16"])
def test_a_gan_trained_by_the_trainer_equals_two_horovod_optimizers_stepped_by_hand(args):
    trained = results(run_workers(GAN, ["--epochs", "3", *args], timeout=180))
    by_hand = results(run_workers(GAN, ["--epochs", "3", "--by-hand", *args], timeout=180))
    for rank in (0, 1):
        assert trained[rank]["params"] == pytest.approx(by_hand[rank]["params"], abs=1e-6)
    assert trained[0]["params"] == trained[1]["params"]
    # 101 samples, 16 a rank: 4 batches an epoch (the last uneven, 3 and 2 samples); 2 updates with 3 accumulated
    assert trained[0]["global_step"] == 3 * (2 if "--accumulate" in args else 4)


def test_sigkill_then_resume_in_float16_matches_uninterrupted_run(tmp_path):
    args = ["--epochs", "3", "--every-n-steps", "3", "--precision", "16-mixed"]
    reference = results(run_workers(GAN, [*args, "--checkpoint-dir", str(tmp_path / "ref")], timeout=180))
    crashed = run_workers(GAN, [*args, "--checkpoint-dir", str(tmp_path / "run"), "--die-at-step", "7"],
                          check=False, timeout=180)
    assert crashed.returncode != 0
    assert CheckpointManager(tmp_path / "run").checkpoints()[-1].global_step == 6  # mid epoch 1
    resumed = results(run_workers(GAN, [*args, "--checkpoint-dir", str(tmp_path / "run"), "--resume"], timeout=180))
    for rank in (0, 1):
        assert resumed[rank]["resumed_from"].endswith("ckpt-epoch0001-step00000006.ckpt")
        assert resumed[rank]["global_step"] == reference[rank]["global_step"] == 12
        assert resumed[rank]["params"] == pytest.approx(reference[rank]["params"], abs=1e-6)


def test_a_nan_discriminator_loss_on_rank_1_skips_that_update_on_both_ranks_and_stops():
    ranks = results(run_workers(GAN, ["--epochs", "2", "--nan-at-step", "3"], timeout=180))
    for r in ranks.values():
        assert r["stop_reason"] == "non-finite loss on rank 1 at step 3; that step was not applied"
        assert r["global_step"] == 3
        assert r["after"]["discriminator"] == r["before"]["discriminator"]
        assert r["after"]["generator"] != r["before"]["generator"], "the generator's loss was finite: it stepped"
    assert ranks[0]["params"] == ranks[1]["params"]
