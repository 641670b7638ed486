"""The launcher's side of the workers' reports (``hvdtrain.core.job_reports``): who failed first, who stalled.

``hvdtrain run`` starts a ``JobMonitor`` on the job's address before the launcher, and passes its
address and token to every worker. A worker that fails says so before it ends; once a failure that
ends the job has been reported, ``hvdtrain run`` gives the launcher a grace period to stop the job
itself (mpirun can hang in its abort after a network cut) and then ends every process of it.
"""
from __future__ import annotations

import secrets
import select
import socket
import threading
import time
from dataclasses import dataclass

from hvdtrain.core import job_reports
from hvdtrain.core.job_reports import Report
from hvdtrain.launcher.network import LOOPBACK

SILENT_AFTER_S = 3 * job_reports.INTERVAL_S  # a worker not heard from for longer has stopped reporting


@dataclass(frozen=True)
class Heard:
    report: Report
    at: float  # time.monotonic() when it arrived


class JobMonitor:
    """Receives the workers' reports on ``address`` (an IP of this machine) until ``close()``.

    Args:
        address: where to listen: loopback for a job on this machine, else the job's network address.
        elastic: in an elastic job a worker that times out in a collective is a lost worker, which
            Horovod handles; only an uncaught exception ends the job.
        size: the number of workers (static jobs), to name those never heard from.
    """

    def __init__(self, address: str, elastic: bool = False, size: int | None = None) -> None:
        self.token = secrets.token_hex(16)
        self.elastic, self.size = elastic, size
        # Workers on this machine also reach it over loopback, which a cut of the job's link leaves working.
        self._sockets = [_listen(host) for host in dict.fromkeys([address, LOOPBACK])]
        self.address = ",".join("{}:{}".format(*sock.getsockname()[:2]) for sock in self._sockets)
        self.latest: dict[int, Heard] = {}
        self.first_failure: Heard | None = None
        self.last_heard: Heard | None = None  # the newest report of any worker
        self._at_failure: dict[int, Heard] = {}  # each rank as last heard when the first failure came
        self._lock = threading.Lock()
        self._closed = False
        self._thread = threading.Thread(target=self._receive, name="hvdtrain-monitor", daemon=True)
        self._thread.start()

    def env(self) -> dict[str, str]:
        """The variables that tell a worker where to report."""
        return {job_reports.ADDRESS_ENV: self.address, job_reports.TOKEN_ENV: self.token}

    def close(self) -> None:
        self._closed = True
        self._thread.join(timeout=2)
        for sock in self._sockets:
            sock.close()

    def _receive(self) -> None:
        while not self._closed:
            ready, _, _ = select.select(self._sockets, [], [], 0.5)
            for sock in ready:
                try:
                    data = sock.recv(job_reports.MAX_DATAGRAM)
                except OSError:
                    continue
                report = job_reports.decode(data, self.token)  # None for anything but this job's reports
                if report is not None:
                    self.record(report, time.monotonic())

    def record(self, report: Report, at: float) -> None:
        with self._lock:
            if report.kind == job_reports.FAILED:
                last = self.latest.get(report.rank)
                if last is not None and last.report.kind == job_reports.FAILED and last.report.pid == report.pid:
                    return  # a failure is said three times; keep the first
            self.last_heard = Heard(report, at)
            if report.rank >= 0:
                self.latest[report.rank] = Heard(report, at)
            if report.kind == job_reports.FAILED and self.first_failure is None and self._ends_job(report):
                self.first_failure = Heard(report, at)
                self._at_failure = dict(self.latest)
            elif self._waited_in_the_failed_collective(report):
                self._at_failure[report.rank] = Heard(report, at)

    def _waited_in_the_failed_collective(self, report: Report) -> bool:
        """A rank that timed out in the same collective after the first one: it had joined."""
        first = self.first_failure
        return (first is not None and report.failure == job_reports.COLLECTIVE_TIMEOUT
                and report.waiting == first.report.waiting)

    def _ends_job(self, report: Report) -> bool:
        # An elastic job goes on without a lost worker, and a worker whose rejoining failed (Horovod was
        # not initialized: no rank) is one; an exception raised while training ends it.
        return not self.elastic or (report.failure == job_reports.EXCEPTION and report.rank >= 0)

    def silent_for(self, now: float) -> float | None:
        """Seconds since any worker last reported; None before the first report."""
        last = self.last_heard
        return None if last is None else now - last.at

    def describe_failure(self) -> str | None:
        """Who failed first and why, and for a collective timeout the ranks that did not join; None if none."""
        with self._lock:
            failed = self.first_failure
            latest = dict(self._at_failure)
        if failed is None:
            return None
        text = f"{failed.report.where()} failed first: {failed.report.message}"
        if failed.report.failure == job_reports.COLLECTIVE_TIMEOUT:
            missing = self._not_joined(failed, latest)
            text += "\n" + ("\n".join(f"  {line}" for line in missing) if missing else
                            "  every other rank reported waiting in the same collective")
        return text

    def _not_joined(self, failed: Heard, latest: dict[int, Heard]) -> list[str]:
        """The ranks that were not in the collective the failed rank waited in, each as last heard before
        the failure (a rank the launcher ends afterwards may fail in other ways)."""
        lines = []
        for rank in sorted(set(latest) | set(range(self.size or 0))):
            heard = latest.get(rank)
            if heard is None:
                lines.append(f"rank {rank}: never reported (it did not start, or cannot reach this machine)")
            elif heard.report.kind == job_reports.FAILED:
                continue  # it timed out in the same collective
            elif failed.at - heard.at > SILENT_AFTER_S:
                lines.append(f"{heard.report.where()}: silent for {failed.at - heard.at:.0f} s before the failure "
                             "(stopped, hung, or its host cut off)")
            elif heard.report.waiting != failed.report.waiting:
                doing = (f"waiting in {heard.report.waiting} for {heard.report.waited_s:.0f} s" if heard.report.waiting
                         else "in no collective")
                lines.append(f"{heard.report.where()}: did not join, {doing}")
        return lines


def _listen(host: str) -> socket.socket:
    sock = job_reports.udp_socket(host)
    sock.bind((host, 0))
    return sock
