"""The PyTorch Trainer on a real GPU, through Horovod's NCCL path, under real horovodrun.

One process: NCCL refuses two ranks on one GPU (``ncclCommInitRank failed: invalid usage``), so
multi-rank semantics are covered by the CPU suite and these run at np=1 through the full NCCL path.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from hvdtrain.core.checkpoint import CheckpointManager
from tests.launch import REPO, results, run_workers

TRAIN = REPO / "tests" / "torch" / "workers" / "train_worker.py"


def test_the_trainer_puts_the_model_on_the_local_gpu():
    ranks = results(run_workers(TRAIN, ["--epochs", "1"], np=1))
    assert ranks[0]["devices"] == ["cuda:0"]


@pytest.mark.parametrize("precision", ["32", "bf16-mixed", "16-mixed"])
def test_digits_reach_95_percent_on_the_gpu(tmp_path, precision):
    proc = run_workers(REPO / "examples" / "pytorch_digits.py",
                       ["--epochs", "20", "--output-dir", str(tmp_path), "--precision", precision, "--no-progress"],
                       np=1)
    accuracy = float(re.search(r"final val_accuracy=([0-9.]+) after 20 epochs on 1 worker", proc.stdout)[1])
    assert accuracy >= 0.95


def test_float16_kill_and_resume_ends_equal_to_an_uninterrupted_run(tmp_path: Path):
    args = ["--epochs", "3", "--every-n-steps", "4", "--precision", "16-mixed", "--die-rank", "0"]
    reference = results(run_workers(TRAIN, [*args, "--checkpoint-dir", str(tmp_path / "ref")], np=1))
    crashed = run_workers(TRAIN, [*args, "--checkpoint-dir", str(tmp_path / "run"), "--die-at-step", "26"],
                          np=1, check=False)
    assert crashed.returncode != 0
    assert CheckpointManager(tmp_path / "run").checkpoints()[-1].global_step == 24  # 19 steps an epoch
    resumed = results(run_workers(TRAIN, [*args, "--checkpoint-dir", str(tmp_path / "run"), "--resume"], np=1))
    assert resumed[0]["scale"] == reference[0]["scale"]
    assert resumed[0]["params"] == pytest.approx(reference[0]["params"], abs=1e-5)


def test_a_gpu_checkpoint_resumes_on_the_cpu(tmp_path: Path):
    run_workers(TRAIN, ["--epochs", "1", "--checkpoint-dir", str(tmp_path)], np=1)
    ranks = results(run_workers(TRAIN, ["--epochs", "2", "--checkpoint-dir", str(tmp_path), "--resume",
                                        "--device", "cpu"], np=1))
    assert ranks[0]["resumed_from"] and ranks[0]["devices"] == ["cpu"]
    assert len(ranks[0]["history"]) == 2
