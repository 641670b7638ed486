"""A worker's reports to ``hvdtrain run`` (see ``hvdtrain.core.job_reports``): alive once a second, and failed.

Nothing is sent unless the launcher set ``HVDTRAIN_REPORT_ADDRESS``. Reports are UDP datagrams: a
worker never blocks on them, and a launcher that is gone costs nothing.
"""
from __future__ import annotations

import os
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable
from types import TracebackType

from hvdtrain.core import job_reports
from hvdtrain.core.job_reports import Report


class Reporter:
    """Sends this worker's reports; the rank and the wait are read at each report (elastic jobs renumber).

    Args:
        addresses: the launcher's listeners (ip, port): the job's address, then loopback; each report
            goes to every one (on another machine, loopback reaches nobody).
        token: the job's token.
        rank: this worker's rank as Horovod has it now, for a failure; it raises when Horovod is not
            initialized (a worker whose rejoining an elastic job failed has no rank).
        known_rank: the rank the backend last read, for the reports of the background thread (which must
            not call into Horovod while elastic training rebuilds it).
        waiting: returns (what, seconds) of the collective this worker waits in, or None.
    """

    def __init__(self, addresses: list[tuple[str, int]], token: str, rank: Callable[[], int],
                 known_rank: Callable[[], int], waiting: Callable[[], tuple[str, float] | None]) -> None:
        self.token = token
        self._rank, self._known_rank, self._waiting = rank, known_rank, waiting
        self._sockets = [_connected(address) for address in addresses]
        self.host, self.pid = _host_name(self._sockets[0]), os.getpid()
        self._failed = False

    def alive(self) -> None:
        waiting = self._waiting()
        self._send(Report(self._known_rank(), self.host, self.pid, waiting=waiting and waiting[0],
                          waited_s=round(waiting[1], 1) if waiting else 0.0))

    def failed(self, failure: str, waiting: str | None, message: str) -> None:
        """Say why this worker ends, and what it waited in (three times: a datagram can be lost); only the
        first failure counts."""
        if self._failed:
            return
        self._failed = True
        rank = self._current_rank()
        report = Report(-1 if rank is None else rank, self.host, self.pid, kind=job_reports.FAILED, waiting=waiting,
                        failure=failure, message=message.strip())
        for _ in range(3):
            self._send(report)

    def _current_rank(self) -> int | None:
        try:
            return self._rank()
        except Exception:  # Horovod is not initialized (an elastic worker that could not rejoin)
            return None

    def _send(self, report: Report) -> None:
        data = job_reports.encode(report, self.token)
        for sock in self._sockets:
            try:
                sock.send(data)
            except OSError:  # unreachable (a network cut), or nobody listens there: nobody to tell
                pass

    def start(self) -> None:
        """Report alive every ``INTERVAL_S`` from a daemon thread, and report an uncaught exception."""
        def beat() -> None:
            while not self._failed:
                self.alive()
                time.sleep(job_reports.INTERVAL_S)

        threading.Thread(target=beat, name="hvdtrain-reports", daemon=True).start()
        previous = sys.excepthook

        def on_uncaught(kind: type[BaseException], error: BaseException, tb: TracebackType | None) -> None:
            if not issubclass(kind, KeyboardInterrupt):  # Ctrl-C: the launcher's signal status tells it
                self.failed(job_reports.EXCEPTION, None, traceback.format_exception_only(kind, error)[-1])
            previous(kind, error, tb)

        sys.excepthook = on_uncaught


def _connected(address: tuple[str, int]) -> socket.socket:
    sock = job_reports.udp_socket(address[0])
    try:
        sock.connect(address)  # a datagram socket: nothing is sent, the route is chosen
    except OSError:
        pass  # no route now; each send says so again
    return sock


def _host_name(sock: socket.socket) -> str:
    """This host's name, and the address it reaches the launcher from (hosts may share a name)."""
    name = socket.gethostname()
    try:
        source = sock.getsockname()[0]
    except OSError:
        return name
    return name if source.startswith(("127.", "0.")) or source == "::1" else f"{name} {source}"


def reporter_from_env(rank: Callable[[], int], known_rank: Callable[[], int],
                      waiting: Callable[[], tuple[str, float] | None],
                      environ: dict[str, str] | None = None) -> Reporter | None:
    """The reporter ``hvdtrain run`` asked for, or None when this worker was not started by it."""
    environ = os.environ if environ is None else environ
    value, token = environ.get(job_reports.ADDRESS_ENV), environ.get(job_reports.TOKEN_ENV)
    if not value or not token:
        return None
    return Reporter(job_reports.parse_addresses(value), token, rank, known_rank, waiting)
