"""Mixed precision on 2 real workers (CPU autocast): the float16 step order, the scaler's agreement and resume."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from hvdtrain.core.checkpoint import CheckpointManager
from tests.launch import REPO, results, run_workers

TRAIN = Path(__file__).parent / "workers" / "train_worker.py"
pytestmark = pytest.mark.parallel


def test_float16_sigkill_then_resume_matches_uninterrupted_run_scale_included(tmp_path):
    args = ["--epochs", "3", "--every-n-steps", "4", "--precision", "16-mixed"]
    reference = results(run_workers(TRAIN, [*args, "--checkpoint-dir", str(tmp_path / "ref")]))
    crashed = run_workers(TRAIN, [*args, "--checkpoint-dir", str(tmp_path / "run"), "--die-at-step", "14"],
                          check=False)
    assert crashed.returncode != 0
    assert CheckpointManager(tmp_path / "run").checkpoints()[-1].global_step == 12
    ranks = results(run_workers(TRAIN, [*args, "--checkpoint-dir", str(tmp_path / "run"), "--resume"]))
    for rank in (0, 1):
        assert ranks[rank]["resumed_from"].endswith("ckpt-epoch0001-step00000012.ckpt")
        assert ranks[rank]["scale"] == reference[rank]["scale"]
        assert ranks[rank]["params"] == pytest.approx(reference[rank]["params"], abs=1e-6)


def test_an_overflowing_float16_step_is_skipped_on_every_rank_and_training_goes_on():
    # A first scale of 2**40 overflows float16 gradients; the scaler halves it until steps apply.
    ranks = results(run_workers(TRAIN, ["--epochs", "2", "--precision", "16-mixed", "--init-scale", str(2.0 ** 40)]))
    for r in ranks.values():
        assert r["stop_reason"] is None, "an overflow is not a non-finite loss"
        assert len(r["history"]) == 2 and r["global_step"] == 2 * 10
        assert r["scale"] < 2.0 ** 40
    assert ranks[0]["scale"] == ranks[1]["scale"]
    assert ranks[0]["digest"] == ranks[1]["digest"], "every rank skipped the same steps"


@pytest.mark.parametrize("precision", ["bf16-mixed", "16-mixed"])
def test_digits_example_reaches_95_percent_in_mixed_precision(tmp_path, precision):
    proc = run_workers(REPO / "examples" / "pytorch_digits.py",
                       ["--epochs", "20", "--output-dir", str(tmp_path), "--precision", precision, "--no-progress"])
    accuracy = float(re.search(r"final val_accuracy=([0-9.]+) after 20 epochs on 2 workers", proc.stdout)[1])
    assert accuracy >= 0.95
