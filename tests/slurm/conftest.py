"""The real one-node Slurm the tests of this directory submit to, started by `scripts/slurm_local.sh`."""
from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.slurm.helpers import SCRIPT, STATE, SlurmCluster, cancel_jobs


def _script(command: str, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), command], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="session")
def slurm() -> Iterator[SlurmCluster]:
    """A running slurmctld + slurmd, as `make slurm-up` starts them.

    A Slurm that the script started before (and that is healthy) is used and left running; otherwise
    `up` starts one (installing Slurm and munge if missing) and `down` stops it after the session.
    Fails, never skips, when Slurm cannot start: a skip would hide a broken cluster setup.
    """
    status = _script("status", timeout=60)
    started_here = False
    if status.returncode != 0:
        started_here = not (Path(STATE) / "started").exists()
        up = _script("up", timeout=600)
        if up.returncode != 0:
            pytest.fail(f"the local Slurm did not start (`make slurm-up`, exit {up.returncode}):\n"
                        f"{up.stdout[-3000:]}\n{up.stderr[-3000:]}", pytrace=False)
    cluster = SlurmCluster.read()
    yield cluster
    cancel_jobs(cluster.submitted)
    if started_here:
        down = _script("down", timeout=120)
        assert down.returncode == 0, down.stdout + down.stderr


@pytest.fixture(autouse=True)
def _cancel_this_tests_jobs(request: pytest.FixtureRequest) -> Iterator[None]:
    """Jobs a test submitted are cancelled when it ends, so one test's stuck job cannot hold the node
    (and fail the next test) until the session ends."""
    if "slurm" not in request.fixturenames:
        yield
        return
    cluster: SlurmCluster = request.getfixturevalue("slurm")
    before = len(cluster.submitted)
    yield
    cancel_jobs(cluster.submitted[before:])
