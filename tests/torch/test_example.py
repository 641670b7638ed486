"""The PyTorch digits example, as a user runs it, on 2 real workers."""
from __future__ import annotations

import re

import pytest

from tests.launch import REPO, run_workers

pytestmark = pytest.mark.parallel


@pytest.mark.parametrize(("launcher", "checkpoint_subdir"), [("mpirun", "checkpoints"), ("horovodrun", "ckpt")])
def test_digits_example_reaches_95_percent_and_leaves_logs_and_checkpoints(tmp_path, launcher, checkpoint_subdir):
    default_place = checkpoint_subdir == "checkpoints"
    checkpoint_flag = [] if default_place else ["--checkpoint-dir", str(tmp_path / checkpoint_subdir)]
    proc = run_workers(REPO / "examples" / "pytorch_digits.py",
                       ["--epochs", "20", "--output-dir", str(tmp_path), *checkpoint_flag], launcher=launcher)
    accuracy = float(re.search(r"final val_accuracy=([0-9.]+) after 20 epochs on 2 workers", proc.stdout)[1])
    assert accuracy >= 0.95
    assert "step/s" in proc.stderr, "rank 0 shows a progress bar"
    assert len((tmp_path / "metrics.csv").read_text().splitlines()) == 21
    assert list(tmp_path.glob("events.out.tfevents.*"))
    assert list((tmp_path / checkpoint_subdir).glob("ckpt-*.ckpt"))


def test_example_rejects_bad_flags_with_the_fix():
    proc = run_workers(REPO / "examples" / "pytorch_digits.py", ["--epochs", "0"], np=1, check=False)
    assert proc.returncode != 0
    assert "--epochs must be >= 1 (got 0)" in proc.stdout + proc.stderr
