"""`scripts/slurm_local.sh down` (make slurm-down) stops exactly the daemons `up` recorded, nothing else.

Run against a state directory of its own, with stand-in processes named like the daemons, so the
cluster the other tests use keeps running.
"""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.slurm.helpers import SCRIPT


def start_named(tmp_path: Path, name: str) -> subprocess.Popen:
    """A long sleep whose process name (/proc/PID/comm) is ``name``."""
    program = tmp_path / name
    shutil.copy(shutil.which("sleep"), program)
    return subprocess.Popen([str(program), "300"])


@pytest.mark.timeout(60)
def test_down_stops_only_the_recorded_daemons(tmp_path):
    recorded = start_named(tmp_path, "slurmctld")
    other = start_named(tmp_path, "slurmd")          # same name, not recorded: someone else's
    renamed = subprocess.Popen(["sleep", "300"])      # recorded as slurmd, but its PID now runs `sleep`
    state = tmp_path / "state"
    state.mkdir()
    (state / "started").write_text(f"slurmctld {recorded.pid}\nslurmd {renamed.pid}\nmunged 999999999\n")
    try:
        proc = subprocess.run(["bash", str(SCRIPT), "down"], capture_output=True, text=True, timeout=45,
                              env={**os.environ, "HVDTRAIN_SLURM_STATE": str(state)})
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert recorded.wait(timeout=10) is not None
        assert other.poll() is None and renamed.poll() is None
        assert f"stopped slurmctld (pid {recorded.pid})" in proc.stdout
        assert f"slurmd (pid {renamed.pid}) was not running any more" in proc.stdout
        assert not (state / "started").exists()
    finally:
        for process in (recorded, other, renamed):
            process.kill()
            process.wait()
