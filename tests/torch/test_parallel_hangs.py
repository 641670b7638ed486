"""A rank that stops making progress ends the job with a message, within the collective timeout."""
from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from hvdtrain.engine.watchdog import TIMEOUT_ENV
from tests.launch import run_workers

TRAIN = Path(__file__).parent / "workers" / "train_worker.py"
TIMEOUT_S = 10
pytestmark = pytest.mark.parallel


@pytest.mark.parametrize(("stopped", "launcher"), [(1, "mpirun"), (0, "horovodrun")])
def test_a_sigstopped_rank_ends_the_job_naming_the_waiting_rank_and_step(stopped, launcher):
    start = time.monotonic()
    proc = run_workers(TRAIN, ["--epochs", "3", "--stop-at-step", "5", "--die-rank", str(stopped)],
                       launcher=launcher, check=False, timeout=120, env={TIMEOUT_ENV: str(TIMEOUT_S)})
    elapsed = time.monotonic() - start
    assert proc.returncode != 0
    waiting = 1 - stopped
    output = proc.stdout + proc.stderr
    found = re.search(rf"\[hvdtrain rank {waiting}\] ERROR: (.+?) has waited (\d+) s for the other ranks "
                      rf"\(collective timeout {TIMEOUT_S} s\)", output)
    assert found, output[-4000:]
    assert found[1] == "the gradient allreduce of step 6", "the step after the one the stopped rank finished"
    assert int(found[2]) < 2 * TIMEOUT_S
    assert elapsed < 90, f"the job took {elapsed:.0f} s to end"


@pytest.mark.parametrize(("launcher", "names_rank"), [("mpirun", r"process rank 1 with PID \d+ .*signal 9"),
                                                       ("horovodrun", r"Process name: 1\s+Exit code: 137")])
def test_a_sigkilled_rank_ends_every_rank_promptly_naming_it(launcher, names_rank):
    start = time.monotonic()
    proc = run_workers(TRAIN, ["--epochs", "3", "--die-at-step", "5"], launcher=launcher, check=False, timeout=120)
    assert proc.returncode != 0
    assert time.monotonic() - start < 60
    assert re.search(names_rank, proc.stdout + proc.stderr), (proc.stdout + proc.stderr)[-3000:]
