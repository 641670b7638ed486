"""The worker agent of elastic jobs: ends a worker that stopped sending heartbeats, so the job goes on.

Horovod's elastic driver learns that a worker is gone only when its process exits. A worker that
is stopped (``SIGSTOP``) or hung with the interpreter blocked never exits, and the survivors wait
for it at the next rendezvous. ``hvdtrain run --elastic`` therefore starts each worker under this
agent::

    python -m hvdtrain.launcher.agent python train.py ...

The agent runs the worker as its child and hands it the write end of a pipe
(``HVDTRAIN_HEARTBEAT_FD``); hvdtrain's backend writes a byte to it every second, and another when
the interpreter exits. Once the first heartbeat has arrived, silence for
``HVDTRAIN_HEARTBEAT_TIMEOUT`` seconds (default 60) makes the agent kill the worker and exit with
``HANG_EXIT_CODE``, unless the worker said it is exiting (the frameworks' shutdown can take a
while): Horovod records the slot as failed and the others continue without it. Otherwise the agent
exits with the worker's own status. An agent that dies takes its worker with it.
"""
from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time

from hvdtrain.core.env import seconds_from_env
from hvdtrain.engine.watchdog import EXITING, HANG_EXIT_CODE, HEARTBEAT_FD_ENV
from hvdtrain.launcher.orphans import dies_with

HEARTBEAT_TIMEOUT_ENV = "HVDTRAIN_HEARTBEAT_TIMEOUT"
DEFAULT_HEARTBEAT_TIMEOUT_S = 60.0
FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def heartbeat_timeout(environ: dict[str, str] | None = None) -> float:
    """Seconds of silence after which a worker counts as stopped (``HVDTRAIN_HEARTBEAT_TIMEOUT``)."""
    try:
        return seconds_from_env(HEARTBEAT_TIMEOUT_ENV, DEFAULT_HEARTBEAT_TIMEOUT_S, "60", environ)
    except ValueError as error:
        raise SystemExit(f"hvdtrain agent: {error}") from None


def supervise(command: list[str], timeout: float) -> int:
    """Run ``command`` and watch its heartbeats; returns the exit status the agent should have."""
    read_end, write_end = os.pipe()
    env = {**os.environ, HEARTBEAT_FD_ENV: str(write_end)}
    worker = subprocess.Popen(command, env=env, pass_fds=(write_end,),
                              preexec_fn=dies_with(os.getpid(), signal.SIGKILL))
    os.close(write_end)
    for signum in FORWARDED_SIGNALS:
        signal.signal(signum, lambda received, _frame: worker.send_signal(received))
    last_beat: float | None = None
    exiting = False
    while True:
        ready, _, _ = select.select([read_end], [], [], 1.0)
        message = os.read(read_end, 4096) if ready else b""
        if ready and not message:  # the pipe closed: the worker is exiting
            return _status(worker.wait())
        if message:
            last_beat = time.monotonic()
            exiting = exiting or EXITING in message
        if worker.poll() is not None:
            return _status(worker.returncode)
        if last_beat is not None and not exiting and time.monotonic() - last_beat > timeout:
            _end(worker, time.monotonic() - last_beat, timeout)
            return HANG_EXIT_CODE


def _end(worker: subprocess.Popen, silent_s: float, timeout: float) -> None:
    rank = os.environ.get("HOROVOD_RANK", "?")
    sys.stderr.write(f"[hvdtrain agent] ERROR: worker rank {rank} (pid {worker.pid}) sent no heartbeat for "
                     f"{silent_s:.0f} s (timeout {timeout:g} s): it is stopped or hung. Ending it so the elastic "
                     f"job goes on without it. To wait longer, set {HEARTBEAT_TIMEOUT_ENV} (seconds).\n")
    sys.stderr.flush()
    worker.kill()
    worker.wait()


def _status(returncode: int) -> int:
    return 128 - returncode if returncode < 0 else returncode


def main(argv: list[str] | None = None) -> int:
    command = list(sys.argv[1:] if argv is None else argv)
    if not command:
        print("usage: python -m hvdtrain.launcher.agent COMMAND [ARGS...]", file=sys.stderr)
        return 2
    return supervise(command, heartbeat_timeout())


if __name__ == "__main__":
    sys.exit(main())
