"""A per-rank watchdog: a collective that waits too long ends this process, so a job never hangs silently.

A rank that stops making progress (a deadlock, a ``SIGSTOP``, a lost host) leaves every other rank
waiting inside a collective, where Python cannot interrupt it. Horovod's stall inspector reports
this, but it runs on rank 0 only, so a stalled rank 0 goes unnoticed. Here every rank times its own
waits: past the timeout it names itself, the step and the collective, and exits with
``HANG_EXIT_CODE``; the launcher then stops the rest of the job.
"""
from __future__ import annotations

import atexit
import contextlib
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator

from hvdtrain.core.env import seconds_from_env

TIMEOUT_ENV = "HVDTRAIN_COLLECTIVE_TIMEOUT"
DEFAULT_TIMEOUT_S = 600.0
HANG_EXIT_CODE = 75


def timeout_from_env(environ: dict[str, str] | None = None) -> float | None:
    """The timeout in seconds from ``HVDTRAIN_COLLECTIVE_TIMEOUT`` (default 600; 0 turns the watchdog off).

    Raises:
        ValueError: the variable is not a number.
    """
    seconds = seconds_from_env(TIMEOUT_ENV, DEFAULT_TIMEOUT_S, "600", environ, zero="turns the collective watchdog off")
    return seconds if seconds > 0 else None


class Watchdog:
    """Ends this process when one watched wait lasts longer than ``timeout`` seconds.

    Args:
        rank: this process's rank, for the message.
        timeout: seconds one collective may wait; None disables the watchdog.
        on_timeout: called with what waited and the message just before the process ends (to tell
            ``hvdtrain run``).
    """

    def __init__(self, rank: int, timeout: float | None, on_timeout: Callable[[str, str], None] | None = None) -> None:
        self.rank = rank
        self.timeout = timeout
        self.on_timeout = on_timeout
        self._waiting: tuple[str, float] | None = None
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    @contextlib.contextmanager
    def watch(self, what: str) -> Iterator[None]:
        """Time the wait of ``what`` (e.g. "the gradient allreduce of step 12"); nested waits keep the outer."""
        if self.timeout is None or self._waiting is not None:
            yield
            return
        self._start()
        with self._lock:
            self._waiting = (what, time.monotonic())
        try:
            yield
        finally:
            with self._lock:
                self._waiting = None

    def waiting(self) -> tuple[str, float] | None:
        """What this rank waits in now, and for how many seconds; None outside a watched wait."""
        with self._lock:
            waiting = self._waiting
        return None if waiting is None else (waiting[0], time.monotonic() - waiting[1])

    def _start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="hvdtrain-watchdog", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        interval = min(self.timeout / 4, 5.0)
        while True:
            time.sleep(interval)
            with self._lock:
                waiting = self._waiting
            if waiting is not None and time.monotonic() - waiting[1] > self.timeout:
                self._end(*waiting)

    def _end(self, what: str, since: float) -> None:
        message = (f"{what} has waited {time.monotonic() - since:.0f} s for the other ranks (collective timeout "
                   f"{self.timeout:g} s): some rank stopped making progress (deadlocked, stopped, or its host was "
                   "lost); `hvdtrain run` names the ranks that did not join")
        sys.stderr.write(f"[hvdtrain rank {self.rank}] ERROR: {message}. Ending rank {self.rank} so the job stops "
                         f"instead of hanging. To allow longer waits, set {TIMEOUT_ENV} (seconds; 0 turns this "
                         "off).\n")
        sys.stderr.flush()
        try:
            if self.on_timeout is not None:
                self.on_timeout(what, message)
        finally:
            os._exit(HANG_EXIT_CODE)


HEARTBEAT_FD_ENV = "HVDTRAIN_HEARTBEAT_FD"  # set by hvdtrain.launcher.agent (elastic jobs)
HEARTBEAT, EXITING = b".", b"!"  # what the worker writes to its agent
_heartbeat: threading.Thread | None = None


def start_heartbeat(environ: dict[str, str] | None = None, interval: float = 1.0) -> None:
    """Tell this worker's agent, once a second, that the process still runs (nothing without an agent).

    A stopped or interpreter-blocked worker stops beating, and its agent ends it (see
    ``hvdtrain.launcher.agent``). When the interpreter exits it says so first: the frameworks' own
    shutdown may then take longer than the agent's timeout without any heartbeat.
    """
    global _heartbeat
    value = (os.environ if environ is None else environ).get(HEARTBEAT_FD_ENV, "")
    if _heartbeat is not None or not value.isdigit():
        return
    fd = int(value)

    def send(message: bytes) -> bool:
        try:
            os.write(fd, message)
        except OSError:  # the agent is gone: nobody listens
            return False
        return True

    def beat() -> None:
        while send(HEARTBEAT):
            time.sleep(interval)

    atexit.register(send, EXITING)
    _heartbeat = threading.Thread(target=beat, name="hvdtrain-heartbeat", daemon=True)
    _heartbeat.start()
