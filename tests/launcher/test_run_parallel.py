"""``hvdtrain run -np 2`` for real: every launcher path, a config file, exit codes and signals."""
from __future__ import annotations

import re
import signal
import subprocess
import sys
import time

import pytest

from hvdtrain.engine.watchdog import HANG_EXIT_CODE
from tests.launcher.helpers import TIMEOUT, alive, child_env, explain, hvdtrain, worker_lines, write_script

pytestmark = pytest.mark.parallel

EXPECTED = ["WORKER rank=0 size=2 sum=3 bcast=10 args=['--tag', 'x']",
            "WORKER rank=1 size=2 sum=3 bcast=10 args=['--tag', 'x']"]


@pytest.mark.parametrize("flags", [[], ["--gloo"], ["--mpi"], ["--launcher", "horovodrun", "--mpi"],
                                   ["--launcher", "mpirun"]],
                         ids=["default", "gloo", "mpi", "horovodrun-mpi", "mpirun"])
def test_two_workers_allreduce_and_broadcast(tmp_path, flags):
    script = write_script(tmp_path)
    proc = hvdtrain("run", "-np", "2", *flags, str(script), "--tag", "x", cwd=tmp_path)
    assert proc.returncode == 0, explain(proc)
    assert worker_lines(proc.stdout) == EXPECTED, explain(proc)


MARK = r"""
import os
names = ["HVDTRAIN_MARK", "HOROVOD_FUSION_THRESHOLD", "HOROVOD_CYCLE_TIME"]
sys.stdout.write("MARK " + " ".join(os.environ[name] for name in names) + "\n")
"""


@pytest.mark.parametrize("controller", ["gloo", "mpi"])
def test_settings_from_a_config_file(tmp_path, controller):
    script = write_script(tmp_path)
    (tmp_path / "run.yaml").write_text(f"np: 2\ncontroller: {controller}\nfusion_threshold_mb: 8\ncycle_time_ms: 2\n"
                                       "env: {HVDTRAIN_MARK: from-config}\n")
    script.write_text(script.read_text() + MARK)
    proc = hvdtrain("run", "--config", "run.yaml", script.name, "--tag", "x", cwd=tmp_path)
    assert proc.returncode == 0, explain(proc)
    assert worker_lines(proc.stdout) == EXPECTED, explain(proc)
    assert proc.stdout.count("MARK from-config 8388608 2") == 2, explain(proc)


@pytest.mark.parametrize("flags", [[], ["--launcher", "horovodrun", "--mpi"]], ids=["mpirun", "horovodrun-mpi"])
def test_the_failing_worker_exit_status_comes_back(tmp_path, flags):
    script = write_script(tmp_path, "import horovod.torch as hvd, sys\nhvd.init()\nsys.exit(3 if hvd.rank() else 0)\n")
    proc = hvdtrain("run", "-np", "2", *flags, str(script), cwd=tmp_path)
    assert proc.returncode == 3, explain(proc)


SLEEPER = """
import os, sys, time
import horovod.torch as hvd
hvd.init()
with open(os.path.join(sys.argv[1], f"rank{hvd.rank()}.pid"), "w") as f:
    f.write(str(os.getpid()))
time.sleep(600)
"""


@pytest.mark.parametrize(("flags", "signum"), [([], signal.SIGTERM), (["--gloo"], signal.SIGINT),
                                               ([], signal.SIGKILL)],
                         ids=["mpirun-sigterm", "gloo-sigint", "mpirun-sigkill"])
def test_signals_reach_the_workers_and_nothing_is_left_running(tmp_path, flags, signum):
    script = write_script(tmp_path, SLEEPER)
    proc = subprocess.Popen([sys.executable, "-m", "hvdtrain.cli", "run", "-np", "2", *flags, str(script),
                             str(tmp_path)], cwd=tmp_path, env=child_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + TIMEOUT
        while len(list(tmp_path.glob("rank*.pid"))) < 2:
            assert proc.poll() is None, proc.communicate()[0]
            assert time.monotonic() < deadline, "the workers did not start"
            time.sleep(0.2)
        time.sleep(0.5)  # let the pid files be written completely
        pids = [int(path.read_text()) for path in tmp_path.glob("rank*.pid")]
        proc.send_signal(signum)
        output = proc.communicate(timeout=60)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
    # 128 + N unless the launcher reported a failure of its own: never 0 (`hvdtrain run ... && deploy`).
    # A SIGKILLed hvdtrain run cannot forward anything: its launcher gets SIGTERM as it dies.
    assert proc.returncode != 0, output
    deadline = time.monotonic() + 30
    while [pid for pid in pids if alive(pid)]:
        assert time.monotonic() < deadline, f"workers left running: {[pid for pid in pids if alive(pid)]}\n{output}"
        time.sleep(0.2)


# Rank 1 stops (SIGSTOP) or stays busy outside any collective while rank 0 waits in one; rank 0's
# watchdog ends it after 5 s.
STALLING = """
import os, signal, sys, time
import horovod.torch as hvd
from hvdtrain.torch.backend import HorovodBackend
hvd.init()
backend = HorovodBackend()
backend.allreduce_sum([1.0])
if hvd.rank() == 1:
    if sys.argv[1] == "stopped":
        os.kill(os.getpid(), signal.SIGSTOP)
    time.sleep(120)
backend.allreduce_sum([1.0])
"""
STALL_ENV = {"HVDTRAIN_COLLECTIVE_TIMEOUT": "5", "HVDTRAIN_FAILURE_GRACE": "5"}


@pytest.mark.parametrize(("flags", "how"), [([], "stopped"), ([], "busy"), (["--gloo"], "stopped")],
                         ids=["mpirun-stopped", "mpirun-busy", "gloo-stopped"])
def test_the_rank_that_did_not_join_is_named_and_the_job_ends(tmp_path, flags, how):
    # Under Gloo, horovodrun ends rank 0 but waits forever for the stopped rank 1: hvdtrain run ends it.
    script = write_script(tmp_path, STALLING)
    proc = hvdtrain("run", "-np", "2", *flags, str(script), how, cwd=tmp_path, env=STALL_ENV, timeout=120)
    assert proc.returncode == HANG_EXIT_CODE, explain(proc)
    assert re.search(r"hvdtrain run: rank 0 \(host \S+, pid \d+\) failed first: the collective \S+ has waited",
                     proc.stderr), explain(proc)
    expected = (r"rank 1 \(host \S+, pid \d+\): silent for \d+ s before the failure" if how == "stopped" else
                r"rank 1 \(host \S+, pid \d+\): did not join, in no collective")
    assert re.search(expected, proc.stderr), explain(proc)
