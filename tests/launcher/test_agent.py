"""The elastic worker agent: it ends a worker whose heartbeats stop, and otherwise passes its status on."""
from __future__ import annotations

import subprocess
import sys
import textwrap
import time

from hvdtrain.engine.watchdog import HANG_EXIT_CODE
from tests.launch import REPO
from tests.launcher.helpers import alive

BEATING_WORKER = textwrap.dedent("""
    import atexit, os, signal, sys, time
    from hvdtrain.engine.watchdog import start_heartbeat
    if sys.argv[1] == "slow-exit":
        atexit.register(time.sleep, 4)  # runs after hvdtrain's "exiting" message (atexit is last-in, first-out)
    start_heartbeat(interval=0.2)
    time.sleep(1)
    if sys.argv[1] == "stop":
        os.kill(os.getpid(), signal.SIGSTOP)
    sys.exit(int(sys.argv[2]))
""")


def _agent(tmp_path, *args, timeout_s="1.5"):
    worker = tmp_path / "worker.py"
    worker.write_text(BEATING_WORKER)
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "hvdtrain.launcher.agent", sys.executable, str(worker), *args],
                          capture_output=True, text=True, timeout=60, cwd=REPO,
                          env={"PYTHONPATH": str(REPO), "HVDTRAIN_HEARTBEAT_TIMEOUT": timeout_s,
                               "HOROVOD_RANK": "4"})
    return proc, time.monotonic() - start


def test_a_stopped_worker_is_ended_and_named(tmp_path):
    proc, elapsed = _agent(tmp_path, "stop", "0")
    assert proc.returncode == HANG_EXIT_CODE
    assert "worker rank 4" in proc.stderr and "sent no heartbeat" in proc.stderr, proc.stderr
    assert elapsed < 30


def test_a_worker_that_said_it_is_exiting_may_take_its_time(tmp_path):
    proc, elapsed = _agent(tmp_path, "slow-exit", "0")
    assert proc.returncode == 0, proc.stderr
    assert elapsed > 4


def test_the_workers_own_status_is_passed_on(tmp_path):
    assert _agent(tmp_path, "run", "0")[0].returncode == 0
    assert _agent(tmp_path, "run", "3")[0].returncode == 3


def test_a_bad_timeout_names_the_variable(tmp_path):
    proc, _ = _agent(tmp_path, "run", "0", timeout_s="soon")
    assert proc.returncode != 0 and "HVDTRAIN_HEARTBEAT_TIMEOUT='soon' is not a number" in proc.stderr


def test_a_killed_agent_takes_its_worker_with_it(tmp_path):
    worker = tmp_path / "worker.py"
    worker.write_text("import os, sys, time\nopen(sys.argv[1], 'w').write(str(os.getpid()))\ntime.sleep(120)\n")
    pid_file = tmp_path / "worker.pid"
    agent = subprocess.Popen([sys.executable, "-m", "hvdtrain.launcher.agent", sys.executable, str(worker),
                              str(pid_file)], cwd=REPO, env={"PYTHONPATH": str(REPO)})
    deadline = time.monotonic() + 30
    while not pid_file.exists() or not pid_file.read_text():
        assert time.monotonic() < deadline and agent.poll() is None, "the worker did not start"
        time.sleep(0.1)
    worker_pid = int(pid_file.read_text())
    agent.kill()
    agent.wait()
    while alive(worker_pid):
        assert time.monotonic() < deadline, "the worker outlived its agent"
        time.sleep(0.1)

