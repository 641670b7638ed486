"""``hvdtrain run``: plan the launch (pure) and execute it, forwarding signals so no job is left behind."""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

from hvdtrain.core.env import seconds_from_env
from hvdtrain.core.job_reports import COLLECTIVE_TIMEOUT
from hvdtrain.engine.watchdog import HANG_EXIT_CODE
from hvdtrain.launcher.command import build_plan
from hvdtrain.launcher.config import load_config, merge
from hvdtrain.launcher.errors import LaunchError
from hvdtrain.launcher.machine import Machine, detect_machine
from hvdtrain.launcher.monitor import JobMonitor
from hvdtrain.launcher.network import job_network
from hvdtrain.launcher.orphans import dies_with
from hvdtrain.launcher.plan import GeneratedScript, LaunchPlan
from hvdtrain.launcher.reach import check_reachable, remote_shell

FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
# After a forwarded signal, how long the launcher gets to stop its workers before they are killed.
GRACE_SECONDS = 20.0
# After a worker reported a failure, how long the launcher gets to end the job itself.
FAILURE_GRACE_ENV = "HVDTRAIN_FAILURE_GRACE"
FAILURE_GRACE_SECONDS = 30.0
# An elastic job none of whose workers has reported for this long has no worker left to go on with.
NO_WORKER_TIMEOUT_ENV = "HVDTRAIN_NO_WORKER_TIMEOUT"
NO_WORKER_TIMEOUT_SECONDS = 120.0
# Why hvdtrain run ended a job itself.
ENDED_FOR_FAILURE, ENDED_WITHOUT_WORKERS = "a worker failed", "no worker was left"


def plan_job(cli_values: dict[str, Any], script: str, script_args: list[str], config_path: str | None = None,
             machine: Machine | None = None, check_hosts: bool = False) -> LaunchPlan:
    """Merge the config file (if any) with the command-line values and build the launch command.

    Args:
        check_hosts: also check that every remote host answers the remote shell (unless the
            options say ``skip_host_check``, or mpirun launches in a Slurm allocation, through srun).

    Raises:
        LaunchError: bad config, options, hosts or script, or a remote host that does not answer.
    """
    config = load_config(config_path) if config_path else {}
    options = merge(config, cli_values)
    plan = build_plan(options, script, script_args, machine or detect_machine())
    # Inside a Slurm allocation mpirun starts its daemons with srun, not ssh: nothing to check.
    slurm_launches = plan.allocation is not None and plan.launcher == "mpirun"
    if check_hosts and plan.hosts and not options.skip_host_check and not slurm_launches:
        shell = remote_shell(options.mpi_args, options.ssh_port, options.ssh_identity_file)
        check_reachable([host.name for host in plan.hosts], shell)
    return plan


def run_job(plan: LaunchPlan, dry_run: bool = False, out: TextIO | None = None) -> int:
    """Print the command (``dry_run``) or run it; returns the launcher's exit status."""
    out = out or sys.stdout
    for warning in plan.warnings:
        print(f"hvdtrain run: warning: {warning}", file=sys.stderr, flush=True)
    if plan.allocation is not None:
        print(f"hvdtrain run: {plan.np} worker(s) in {plan.allocation.describe()}", file=sys.stderr, flush=True)
    if dry_run:
        print(plan.shell(), file=out, flush=True)
        if plan.discovery_script:
            print(describe_generated(plan.discovery_script), file=out, flush=True)
        return 0
    network = job_network(plan.hosts, plan.interfaces, plan.hosts_may_change)
    if network.warning:
        print(f"hvdtrain run: warning: {network.warning}, so the workers' report listener and Horovod's Gloo "
              "rendezvous server listen on every address of this machine; give --network-interface to keep them "
              "on the job's network", file=sys.stderr, flush=True)
    monitor = JobMonitor(network.address, elastic=plan.elastic, size=None if plan.elastic else plan.np)
    plan = plan.for_execution(network, sys.executable)
    try:
        with written(plan.discovery_script):
            return execute(plan.argv, plan.env, monitor=monitor)
    finally:
        monitor.close()


def describe_generated(script: GeneratedScript) -> str:
    """The script ``hvdtrain run`` would write, as shell comments (a dry run's output stays a shell script)."""
    lines = [f"# {script.path}, written when the job starts and removed when it ends:",
             *(f"#   {line}" for line in script.text.splitlines())]
    return "\n".join(lines)


@contextlib.contextmanager
def written(script: GeneratedScript | None) -> Iterator[None]:
    """Write ``script`` (executable, in a new directory only this user can read) for the block, then remove it.

    horovodrun runs the discovery script on this machine only, so a local temporary directory is
    enough, and one named at random and created here (never reused) cannot be another job's.
    """
    if script is None:
        yield
        return
    path = Path(script.path)
    path.parent.mkdir(mode=0o700)
    try:
        path.write_text(script.text)
        path.chmod(0o700)
        yield
    finally:
        shutil.rmtree(path.parent, ignore_errors=True)


def execute(argv: list[str], env_updates: dict[str, str] | None = None, grace_seconds: float = GRACE_SECONDS,
            monitor: JobMonitor | None = None, failure_grace: float | None = None) -> int:
    """Run the launcher in its own process group and wait for it.

    SIGINT, SIGTERM and SIGHUP received here are forwarded to the launcher, which stops its
    workers. A second signal, or a launcher still running ``grace_seconds`` after the first, gets
    SIGKILL for the launcher's whole session (its own new session, so nothing else is touched).
    Whatever is left in that session when the launcher exits is killed too.

    With a ``monitor``, a worker's reported failure gives the launcher ``failure_grace`` seconds
    (``HVDTRAIN_FAILURE_GRACE``) to end the job; then its session is killed the same way.

    Returns:
        The launcher's exit status, or 128 + N when it died from signal N. After a forwarded signal
        N it is never 0: 128 + N, unless the launcher reported a failure of its own. A job ended
        because a worker failed returns that worker's status (75 for a collective timeout, else 1).
    """
    grace = failure_grace_seconds() if failure_grace is None else failure_grace  # a bad value fails before the start
    no_worker_timeout = no_worker_timeout_seconds()
    env = {**os.environ, **(env_updates or {}), **(monitor.env() if monitor else {})}
    # SIGTERM when hvdtrain run dies, even by SIGKILL: the launcher then stops its workers.
    proc = subprocess.Popen(argv, env=env, start_new_session=True,
                            preexec_fn=dies_with(os.getpid(), signal.SIGTERM))
    signals: list[tuple[int, float]] = []

    def forward(signum: int, _frame: Any) -> None:
        if signals:
            _kill_session(proc.pid)
        else:
            _send(proc, signum)
        signals.append((signum, time.monotonic()))

    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = {sig: signal.signal(sig, forward) for sig in FORWARDED_SIGNALS} if in_main_thread else {}
    try:
        ended = _wait_for_exit(proc.pid, signals, grace_seconds, monitor, grace, no_worker_timeout)
        # The launcher has exited but is not reaped yet, so its session id cannot be reused: clean up.
        _kill_session(proc.pid)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    status = proc.wait()
    status = 128 - status if status < 0 else status
    return _job_status(status, signals, monitor, ended)


def _job_status(status: int, signals: list[tuple[int, float]], monitor: JobMonitor | None,
                ended: str | None) -> int:
    failure = monitor.describe_failure() if monitor else None
    if failure and (status != 0 or ended):
        print(f"hvdtrain run: {failure}", file=sys.stderr, flush=True)
    if ended == ENDED_FOR_FAILURE:
        return HANG_EXIT_CODE if monitor.first_failure.report.failure == COLLECTIVE_TIMEOUT else 1
    if ended == ENDED_WITHOUT_WORKERS:
        return 1
    if signals and status == 0:  # interrupted: never report success (`hvdtrain run ... && deploy`)
        return 128 + signals[0][0]
    return status


def failure_grace_seconds(environ: dict[str, str] | None = None) -> float:
    """``HVDTRAIN_FAILURE_GRACE``: seconds the launcher gets to end a job after a worker failed (default 30)."""
    try:
        return seconds_from_env(FAILURE_GRACE_ENV, FAILURE_GRACE_SECONDS, "30", environ,
                                zero="ends the job as soon as a worker fails")
    except ValueError as error:
        raise LaunchError(str(error)) from None


def no_worker_timeout_seconds(environ: dict[str, str] | None = None) -> float:
    """``HVDTRAIN_NO_WORKER_TIMEOUT``: seconds an elastic job may go without any worker (default 120)."""
    try:
        return seconds_from_env(NO_WORKER_TIMEOUT_ENV, NO_WORKER_TIMEOUT_SECONDS, "120", environ)
    except ValueError as error:
        raise LaunchError(str(error)) from None


def _wait_for_exit(pid: int, signals: list[tuple[int, float]], grace_seconds: float, monitor: JobMonitor | None,
                   failure_grace: float, no_worker_timeout: float) -> str | None:
    """Block until ``pid`` exits, without reaping it; kill its session once a grace period is over.

    Returns:
        Why the session was killed when the launcher did not end the job itself: a worker's failure
        (``ENDED_FOR_FAILURE``), or an elastic job left without workers (``ENDED_WITHOUT_WORKERS``).
    """
    ended = None
    while os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None:
        now = time.monotonic()
        if signals and now - signals[-1][1] > grace_seconds:
            print(f"hvdtrain: the launcher did not stop {grace_seconds:g} s after the signal; killing the job",
                  file=sys.stderr, flush=True)
            _kill_session(pid)
            signals.append((signals[0][0], now))
        if ended is None and monitor is not None:
            ended = _overdue(monitor, now, failure_grace, no_worker_timeout)
            if ended is not None:
                _kill_session(pid)
        time.sleep(0.2)
    return ended


def _overdue(monitor: JobMonitor, now: float, failure_grace: float, no_worker_timeout: float) -> str | None:
    """Why the job must be ended now (printing it), or None while the launcher may still end it."""
    failed = monitor.first_failure
    if failed is not None and now - failed.at > failure_grace:
        print(f"hvdtrain run: {failed.report.where()} failed and the launcher has not ended the job "
              f"{failure_grace:g} s later; ending every process of it", file=sys.stderr, flush=True)
        return ENDED_FOR_FAILURE
    silent = monitor.silent_for(now)
    if monitor.elastic and silent is not None and silent > no_worker_timeout:
        # Horovod's elastic driver can wait forever once every worker is gone (a failure it ignores).
        print(f"hvdtrain run: no worker of the elastic job has reported for {silent:.0f} s (the last was "
              f"{monitor.last_heard.report.where()}): every worker has ended and Horovod's elastic driver started "
              f"none; ending every process of the job. Its checkpoints hold its progress: start it again, resuming "
              f"from them. To wait longer, set {NO_WORKER_TIMEOUT_ENV} (seconds).", file=sys.stderr, flush=True)
        return ENDED_WITHOUT_WORKERS
    return None


def _send(proc: subprocess.Popen, signum: int) -> None:
    try:
        proc.send_signal(signum)
    except ProcessLookupError:
        pass


def session_members(sid: int) -> list[int]:
    """Processes of session ``sid`` (Linux /proc); mpirun puts each worker in a group of its own."""
    members = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if len(fields) > 3 and int(fields[3]) == sid:
            members.append(int(entry.name))
    return members


def _kill_session(sid: int) -> None:
    """SIGKILL the launcher's session: its own process group and every worker group it created."""
    members = session_members(sid)
    try:
        os.killpg(sid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    for pid in members:
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
