"""The workers' reports to ``hvdtrain run`` over real loopback sockets, and what the launcher does with them."""
from __future__ import annotations

import signal
import socket
import sys
import textwrap
import time

import pytest

from hvdtrain.core import job_reports
from hvdtrain.core.job_reports import Report
from hvdtrain.engine.reporting import Reporter
from hvdtrain.launcher.monitor import JobMonitor
from hvdtrain.launcher.run import execute
from tests.launch import REPO


@pytest.fixture
def monitor():
    job = JobMonitor("127.0.0.1", size=3)
    yield job
    job.close()


def _reporter(monitor: JobMonitor, rank: int, waiting=None) -> Reporter:
    return Reporter(job_reports.parse_addresses(monitor.address), monitor.token, lambda: rank, lambda: rank,
                    lambda: waiting)


def _until(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the reports did not arrive"
        time.sleep(0.05)


def test_reports_arrive_over_the_socket(monitor):
    collective = "the gradient allreduce of step 6"
    _reporter(monitor, 1, (collective, 3.0)).alive()
    _reporter(monitor, 0).failed(job_reports.COLLECTIVE_TIMEOUT, collective, f"{collective} has waited 10 s")
    _until(lambda: monitor.first_failure is not None and 1 in monitor.latest)
    assert monitor.latest[1].report.waiting == collective
    assert monitor.describe_failure().startswith(f"rank 0 (host {socket.gethostname()}, pid ")


def test_the_first_failure_is_named_with_the_ranks_that_did_not_join(monitor):
    collective = "the gradient allreduce of step 6"
    monitor.record(Report(1, "b", 11, waiting=collective, waited_s=3.0), at=100.0)
    monitor.record(Report(2, "c", 12), at=100.5)
    monitor.record(Report(0, "a", 10, kind=job_reports.FAILED, failure=job_reports.COLLECTIVE_TIMEOUT,
                          waiting=collective, message=f"{collective} has waited 10 s"), at=101.0)
    text = monitor.describe_failure()
    assert text.startswith("rank 0 (host a, pid 10) failed first: the gradient allreduce of step 6 has waited 10 s")
    assert "rank 1" not in text, "rank 1 waited in the same collective: it joined"
    assert "rank 2 (host c, pid 12): did not join, in no collective" in text


def test_a_silent_rank_and_one_never_heard_from_are_named(monitor):
    monitor.record(Report(1, "b", 11), at=100.0)
    monitor.record(Report(0, "a", 10, kind=job_reports.FAILED, failure=job_reports.COLLECTIVE_TIMEOUT,
                          waiting="x", message="x timed out"), at=124.0)
    text = monitor.describe_failure()
    assert "rank 1 (host b, pid 11): silent for 24 s before the failure" in text
    assert "rank 2: never reported" in text


def test_anything_but_the_jobs_reports_is_dropped_and_the_listener_goes_on(monitor):
    host, port = job_reports.parse_addresses(monitor.address)[0]
    forged = Report(0, "x", 1, kind=job_reports.FAILED, failure=job_reports.EXCEPTION, message="forged")
    wrong_type = job_reports.encode(forged, monitor.token).replace(b'"rank": 0', b'"rank": null')
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
        for junk in (job_reports.encode(forged, "not-the-token"), b"not json", b"[" * 60000, b"[1, 2]",
                     wrong_type):
            sender.sendto(junk, (host, port))
    _reporter(monitor, 1).alive()
    _until(lambda: 1 in monitor.latest)
    assert monitor.first_failure is None and 0 not in monitor.latest


def test_elastic_jobs_end_only_on_an_exception():
    job = JobMonitor("127.0.0.1", elastic=True)
    try:
        job.record(Report(1, "b", 2, kind=job_reports.FAILED, failure=job_reports.COLLECTIVE_TIMEOUT), at=1.0)
        assert job.first_failure is None  # a lost worker: Horovod's elastic run goes on without it
        # A worker whose rejoining failed (Horovod not initialized: no rank) is a lost worker too.
        job.record(Report(-1, "d", 4, kind=job_reports.FAILED, failure=job_reports.EXCEPTION, message="V"), at=2.0)
        assert job.first_failure is None
        job.record(Report(2, "c", 3, kind=job_reports.FAILED, failure=job_reports.EXCEPTION, message="E"), at=3.0)
        assert job.first_failure.report.rank == 2
    finally:
        job.close()


# A launcher stand-in that ignores the signal hvdtrain run forwards and exits 0 later: an interrupted
# job must not report success. With "fail", one that reports a worker failure and never ends; with
# "orphaned", one whose only worker reports once and is gone; with "beating", one whose worker reports
# every half second for 4 s and then ends the job with 0.
LAUNCHER = textwrap.dedent("""
    import os, signal, sys, time
    from hvdtrain.engine.reporting import reporter_from_env
    signal.signal(signal.SIGINT, lambda *_: sys.exit(0))
    reporter = reporter_from_env(lambda: 1, lambda: 1, lambda: None)
    if sys.argv[1] == "fail":
        reporter.failed("exception", None, "ValueError: bad batch")
    if sys.argv[1] == "orphaned":
        reporter.alive()
    if sys.argv[1] == "beating":
        for _ in range(8):
            reporter.alive()
            time.sleep(0.5)
        sys.exit(0)
    open(sys.argv[2], "w").close()
    time.sleep(120)
""")


def _launcher(tmp_path, mode):
    script = tmp_path / "launcher.py"
    script.write_text(LAUNCHER)
    return [sys.executable, str(script), mode, str(tmp_path / "started")]


def test_an_interrupted_job_exits_with_128_plus_the_signal_even_if_the_launcher_says_0(tmp_path):
    import os
    import threading

    def interrupt():
        _until(lambda: (tmp_path / "started").exists(), timeout=60)
        os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=interrupt, daemon=True).start()
    assert execute(_launcher(tmp_path, "run"), {"PYTHONPATH": str(REPO)}) == 128 + signal.SIGINT


def test_a_reported_failure_ends_a_launcher_that_hangs(tmp_path, capfd):
    job = JobMonitor("127.0.0.1")
    start = time.monotonic()
    try:
        status = execute(_launcher(tmp_path, "fail"), {"PYTHONPATH": str(REPO)}, monitor=job, failure_grace=2)
    finally:
        job.close()
    assert status == 1
    assert time.monotonic() - start < 60
    err = capfd.readouterr().err
    assert "failed and the launcher has not ended the job 2 s later" in err
    assert "rank 1 (host" in err and "failed first: ValueError: bad batch" in err


def test_an_elastic_job_left_without_workers_is_ended_and_one_whose_workers_report_is_not(tmp_path, capfd,
                                                                                            monkeypatch):
    # Horovod's elastic driver can wait forever once every worker has ended (it ignores some failures).
    monkeypatch.setenv("HVDTRAIN_NO_WORKER_TIMEOUT", "2")
    env = {"PYTHONPATH": str(REPO)}
    for mode, expected in (("orphaned", 1), ("beating", 0)):
        job = JobMonitor("127.0.0.1", elastic=True)
        start = time.monotonic()
        try:
            assert execute(_launcher(tmp_path, mode), env, monitor=job) == expected, mode
        finally:
            job.close()
        assert time.monotonic() - start < 60
    err = capfd.readouterr().err
    assert err.count("no worker of the elastic job has reported for") == 1, err
    assert "(the last was rank 1 (host" in err and "set HVDTRAIN_NO_WORKER_TIMEOUT" in err
