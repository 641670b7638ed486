"""Model parallelism: a model split across 2 ranks under real mpirun."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.launch import REPO, results, run_workers

pytestmark = pytest.mark.parallel


def test_pipeline_step_equals_unsplit_model_step():
    ranks = results(run_workers(Path(__file__).parent / "workers" / "pipeline_worker.py", launcher="mpirun"))
    assert sorted(ranks) == [0, 1]
    for r in ranks.values():
        assert r["param_error"] < 1e-12 and r["params"] > 0
    assert ranks[1]["loss"] == pytest.approx(ranks[1]["ref_loss"], abs=1e-12)


def test_model_parallel_example_learns_digits():
    proc = run_workers(REPO / "examples" / "model_parallel_digits.py", launcher="mpirun")
    accuracy = float(re.search(r"final val_accuracy=([0-9.]+) with the model split across 2 ranks", proc.stdout)[1])
    assert accuracy >= 0.95


def test_pipeline_refuses_a_single_process():
    proc = run_workers(REPO / "examples" / "model_parallel_digits.py", np=1, launcher="mpirun", check=False)
    assert proc.returncode != 0
    assert "a pipeline needs at least 2 ranks" in proc.stderr
