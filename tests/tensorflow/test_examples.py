"""The TensorFlow digits examples, as a user runs them, on 2 real workers."""
from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests.launch import REPO, run_workers

EPOCHS = 10
pytestmark = pytest.mark.parallel


@pytest.mark.parametrize("launcher", ["horovodrun", "mpirun"])
@pytest.mark.parametrize("example", ["keras_digits.py", "tensorflow_digits.py"])
def test_digits_example_reaches_95_percent_and_leaves_logs_and_checkpoints(tmp_path, example, launcher):
    proc = run_workers(REPO / "examples" / example, ["--epochs", str(EPOCHS), "--output-dir", str(tmp_path)],
                       launcher=launcher, timeout=240)
    found = re.search(rf"final val_accuracy=([0-9.]+) after {EPOCHS} epochs on 2 workers", proc.stdout)
    assert found, proc.stdout[-3000:]
    assert float(found[1]) >= 0.95
    assert proc.stdout.count("final val_accuracy=") == 1, "only rank 0 prints the result"
    assert "step/s" in proc.stderr, "rank 0 shows a progress bar"
    assert len((tmp_path / "metrics.csv").read_text().splitlines()) == EPOCHS + 1
    assert list(tmp_path.glob("events.out.tfevents.*"))
    assert list((tmp_path / "checkpoints").glob("ckpt-*.ckpt"))


@pytest.mark.parametrize("example", ["keras_digits.py", "tensorflow_digits.py"])
def test_example_resumes_from_its_checkpoints(tmp_path, example):
    run_workers(REPO / "examples" / example, ["--epochs", "2", "--output-dir", str(tmp_path), "--no-progress"],
                timeout=240)
    proc = run_workers(REPO / "examples" / example,
                       ["--epochs", "3", "--output-dir", str(tmp_path), "--resume", "--no-progress"], timeout=240)
    assert "at epoch 2, step" in proc.stdout
    assert len((tmp_path / "metrics.csv").read_text().splitlines()) == 3 + 1, "the CSV continues across the resume"


@pytest.mark.parametrize("example", ["keras_digits.py", "tensorflow_digits.py"])
def test_example_rejects_bad_flags_with_the_fix(example):
    # Flags are checked before TensorFlow is imported, so this needs no launcher and is instant.
    proc = subprocess.run([sys.executable, str(REPO / "examples" / example), "--epochs", "0"], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode != 0
    assert "--epochs must be >= 1 (got 0)" in proc.stderr


@pytest.mark.parametrize(("example", "precision"), [("keras_digits.py", "16-mixed"),
                                                    ("tensorflow_digits.py", "bf16-mixed")])
def test_digits_example_reaches_95_percent_in_mixed_precision(tmp_path, example, precision):
    proc = run_workers(REPO / "examples" / example, ["--epochs", str(EPOCHS), "--output-dir", str(tmp_path),
                                                     "--precision", precision, "--no-progress"], timeout=300)
    found = re.search(rf"final val_accuracy=([0-9.]+) after {EPOCHS} epochs on 2 workers", proc.stdout)
    assert found, proc.stdout[-3000:]
    assert float(found[1]) >= 0.95
