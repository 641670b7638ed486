"""Elastic TensorFlow training under `hvdtrain run --elastic`: a worker killed with SIGKILL costs the job the
steps since the last commit, not the run; the others go on re-sharded, and a worker that comes back is taken in."""
from __future__ import annotations

import os
import re
import signal
from pathlib import Path

import pytest

from tests.launch import (
    REPO,
    assert_rank_zero_outputs,
    elastic_reports,
    finish_elastic,
    reached_epoch,
    start_elastic,
    wait_for,
    worker_pids,
)
from tests.probes import steps_per_epoch

TRAIN = Path(__file__).parent / "workers" / "train_worker.py"
# The others wait for a joining worker at Horovod's rendezvous: long enough for it to import TensorFlow.
JOIN_ENV = {"HOROVOD_GLOO_TIMEOUT_SECONDS": "30"}
TIMEOUT = 240
pytestmark = pytest.mark.parallel


@pytest.mark.parametrize("api", ["trainer", "fit"])
def test_a_killed_worker_is_dropped_and_the_epoch_is_resharded_from_the_last_commit(tmp_path, api):
    # 300 samples, 16 per worker: 3 workers take 7 steps an epoch; rank 1 is killed at step 9 (epoch 1),
    # one step after the commit of step 8. A long cooldown keeps its slot out.
    proc = start_elastic(TRAIN, ["--api", api, "--epochs", "4", "--die-at-step", "9", "--die-rank", "1",
                                 "--commit-every", "2", "--once-marker", str(tmp_path / "lost")], cooldown=(600, 1000))
    output = finish_elastic(proc, timeout=TIMEOUT)
    assert proc.returncode == 0, output[-5000:]
    assert "the job now has 2 workers (was 3): continuing at epoch 1, step 8" in output, output[-5000:]
    reports = elastic_reports(proc)
    assert sorted(reports) == [0, 1] and {r["size"] for r in reports.values()} == {2}, output[-5000:]
    committed = (8 - steps_per_epoch(300, 3, 16)) * 48  # samples of epoch 1 done at the commit of step 8
    assert reports[0]["world_changes"] == [[3, 2, 1, 8, committed]]
    for report in reports.values():
        last_of_epoch = {epoch: seen for epoch, _, _, seen in report["steps"]}
        assert last_of_epoch == {0: 300, 1: 300, 2: 300, 3: 300}, "every sample once per epoch"
        assert len(report["history"]) == 4
    assert reports[0]["global_step"] == 8 + steps_per_epoch(300, 2, 16, committed) + 2 * steps_per_epoch(300, 2, 16)
    assert reports[0]["digest"] == reports[1]["digest"]


# Keras fit loses rank 0 (its CSV, TensorBoard and checkpoint writer), the custom loop rank 1.
# The Keras example loses rank 0; a lost non-zero rank under the TF Trainer is the test above (CI time).
@pytest.mark.parametrize(("example", "lost_rank"), [("keras_digits.py", 0)])
def test_the_digits_example_survives_a_killed_worker_and_takes_a_returning_one_back(tmp_path, example, lost_rank):
    out = tmp_path / "run"
    proc = start_elastic(REPO / "examples" / example, ["--epochs", "40", "--no-progress", "--output-dir", str(out),
                                                       "--commit-every-n-steps", "4"], cooldown=(3, 5), env=JOIN_ENV)
    wait_for(lambda: reached_epoch(out / "checkpoints", 2), proc, timeout=TIMEOUT)
    os.kill(worker_pids(str(out))[lost_rank], signal.SIGKILL)
    output = finish_elastic(proc, timeout=TIMEOUT)
    assert proc.returncode == 0, output[-5000:]
    assert "the job now has 2 workers (was 3)" in output, output[-5000:]
    assert "the job now has 3 workers (was 2)" in output, "the returning worker was taken in"
    final = re.search(r"final val_accuracy=([\d.]+) after 40 epochs on 3 workers", output)
    assert final and float(final[1]) >= 0.95, output[-3000:]
    assert_rank_zero_outputs(out, 40)
