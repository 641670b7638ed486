"""Elastic TensorFlow training under real ``horovodrun --min-np 2 --max-np 3``: a worker killed with SIGKILL
mid-training costs the job the steps since the last commit, not the run; a worker that joins later
takes rank 0's state and training goes on with three."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.elastic_jobs import ElasticJob
from tests.launch import REPO

WORKER = Path(__file__).parent / "workers" / "elastic_worker.py"
TIMEOUT = 240
pytestmark = pytest.mark.parallel


def finish_after_killing_rank_1(job: ElasticJob, metrics_csv: Path, epochs_before: int = 2) -> str:
    """Kill the worker of rank 1 once rank 0 logged ``epochs_before`` epochs; the job's output once it ended."""
    job.wait_for(lambda: metrics_csv.exists() and len(metrics_csv.read_text().splitlines()) > epochs_before,
                 TIMEOUT, f"{epochs_before} epochs in {metrics_csv}")
    job.kill_worker(1)
    returncode = job.wait(TIMEOUT)
    output = job.output()
    assert returncode == 0, output[-6000:]
    assert re.search(r"the job now has 2 workers \(was 3\): rank 0 continues at epoch \d+, step \d+", output), \
        output[-6000:]
    return output


def test_keras_fit_example_loses_a_worker_and_still_reaches_95_percent(tmp_path):
    job = ElasticJob(REPO / "examples" / "keras_digits.py",
                     ["--epochs", "30", "--no-progress", "--output-dir", str(tmp_path)], tmp_path)
    output = finish_after_killing_rank_1(job, tmp_path / "metrics.csv")
    found = re.search(r"final val_accuracy=([0-9.]+) after 30 epochs on [23] workers", output)
    assert found, output[-6000:]
    assert float(found[1]) >= 0.95


def test_trainer_loses_a_worker_then_a_new_one_joins_and_all_ranks_end_equal(tmp_path):
    # While short-handed every batch sleeps 0.5 s: the run cannot end before the killed slot's
    # blacklisting (10 to 20 s) is over and a new worker joined.
    job = ElasticJob(WORKER, ["--epochs", "20", "--short-handed-sleep", "0.5", "--log-dir", str(tmp_path)], tmp_path)
    output = finish_after_killing_rank_1(job, tmp_path / "metrics.csv")
    assert "the job now has 3 workers (was 2)" in output, output[-6000:]
    found = job.results()
    assert sorted(found) == [0, 1, 2], output[-6000:]
    assert {r["size"] for r in found.values()} == {3}
    assert len({r["digest"] for r in found.values()}) == 1, "every rank ends with the same weights"
    assert {(r["epoch"], len(r["history"])) for r in found.values()} == {(20, 20)}
    assert found[0]["world_changes"] == [[3, 2], [2, 3]]
    assert [2, 3] in found[2]["world_changes"], "the worker that joined heard of the change too"
    assert found[0]["history"][-1]["val_accuracy"] >= 0.95
