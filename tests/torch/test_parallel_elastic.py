"""Elastic training under `hvdtrain run --elastic`: a lost or stopped worker is dropped, the others go on
from the last commit, re-sharded, and a worker that comes back is taken in."""
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
EXAMPLE = REPO / "examples" / "pytorch_digits.py"
pytestmark = pytest.mark.parallel
UPSTREAM_GLOO_ABORT = "terminate called after throwing an instance of 'gloo::"


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGSTOP], ids=["sigkill", "sigstop"])
def test_a_lost_worker_is_dropped_and_the_epoch_is_resharded_from_the_last_commit(tmp_path, signum):
    flag = "--die-at-step" if signum == signal.SIGKILL else "--stop-at-step"
    # 300 samples, 16 per worker: 3 workers take 7 steps an epoch; rank 1 is lost at step 9 (epoch 1),
    # one step after the commit of step 8. A long cooldown keeps its slot out.
    proc = start_elastic(TRAIN, ["--epochs", "4", flag, "9", "--die-rank", "1", "--commit-every", "2",
                                 "--once-marker", str(tmp_path / "lost")], cooldown=(600, 1000))
    output = finish_elastic(proc, timeout=240)
    assert proc.returncode == 0, output[-5000:]
    if signum == signal.SIGSTOP:
        assert re.search(r"\[hvdtrain agent\] ERROR: worker rank 1 \(pid \d+\) sent no heartbeat", output), output
    reports = elastic_reports(proc)
    assert sorted(reports) == [0, 1] and {r["size"] for r in reports.values()} == {2}, output[-5000:]
    first = steps_per_epoch(300, 3, 16)
    committed = (8 - first) * 48  # samples of epoch 1 done at the commit of step 8
    assert reports[0]["world_changes"] == [[3, 2, 1, 8, committed]]
    for report in reports.values():
        last_of_epoch = {epoch: seen for epoch, _, _, seen in report["steps"]}
        assert last_of_epoch == {0: 300, 1: 300, 2: 300, 3: 300}, "every sample once per epoch"
    assert reports[0]["global_step"] == 8 + steps_per_epoch(300, 2, 16, committed) + 2 * steps_per_epoch(300, 2, 16)
    assert reports[0]["digest"] == reports[1]["digest"]


def test_the_digits_example_survives_losing_rank_0_and_takes_a_returning_worker_back(tmp_path):
    # Rank 0 holds the progress bar, the CSV and TensorBoard files and the checkpoints: another process
    # takes them over.
    out = tmp_path / "run"
    proc = start_elastic(EXAMPLE, ["--epochs", "40", "--no-progress", "--output-dir", str(out),
                                   "--commit-every-n-steps", "4"], cooldown=(3, 5),
                         env={"HOROVOD_GLOO_TIMEOUT_SECONDS": "20",  # longer than a joining worker's start
                              "HVDTRAIN_NO_WORKER_TIMEOUT": "40"})
    wait_for(lambda: reached_epoch(out / "checkpoints", 3), proc, timeout=120)
    os.kill(worker_pids(str(out))[0], signal.SIGKILL)
    output = finish_elastic(proc, timeout=300)
    print(output)  # whole, in the report of a failure
    if proc.returncode != 0 and UPSTREAM_GLOO_ABORT in output:
        # Under load a survivor's Gloo can abort the process when a peer dies mid-collective (upstream);
        # then no worker is left, Horovod's driver waits forever, and hvdtrain run must end the job.
        assert proc.returncode == 1 and "no worker of the elastic job has reported for" in output, output[-5000:]
        pytest.xfail("a survivor's Gloo aborted the process (upstream); hvdtrain run ended the job without workers")
    assert proc.returncode == 0, output[-5000:]
    assert "the job now has 2 workers (was 3)" in output, output[-5000:]
    assert "the job now has 3 workers (was 2)" in output, "the returning worker was taken in"
    final = re.search(r"final val_accuracy=([\d.]+) after 40 epochs on (\d) workers", output)
    assert final and float(final[1]) >= 0.95, output[-3000:]
    assert_rank_zero_outputs(out, 40)
