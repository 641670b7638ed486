"""Run a script under ``horovodrun``'s elastic mode on this one machine, and lose a worker on purpose.

Horovod's elastic driver blacklists a whole host when one of its workers fails, so each slot is
its own host: the discovery script names 127.0.0.1 in distinct spellings, one slot each, and
``HVDTRAIN_LOCAL_SLOT_HOSTS`` tells hvdtrain which local slot each spelling is.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from tests.launch import BIN, QUIET_ENV, REPO, RESULTS_ENV

SLOT_HOSTS = ("127.0.0.1", "127.0.0.01", "127.0.0.001")


class ElasticJob:
    """``script`` on ``np`` workers (at least ``min_np``) under ``horovodrun``, output in ``directory/job.log``.

    A failed slot comes back after the blacklist cooldown (2 to 4 s here), and a new worker then joins.
    The survivors wait for it at Horovod's rendezvous, so ``HOROVOD_GLOO_TIMEOUT_SECONDS`` must cover a
    worker's start (importing TensorFlow takes over 10 s on a busy 2-core machine).
    """

    def __init__(self, script: str | os.PathLike, args: list[str], directory: Path, np: int = 3,
                 min_np: int = 2) -> None:
        self.results_dir = tempfile.mkdtemp(prefix="hvdtrain-results-")
        self.log = directory / "job.log"
        discovery = directory / "discover_hosts.sh"
        discovery.write_text("#!/bin/sh\n" + "".join(f"echo {host}:1\n" for host in SLOT_HOSTS[:np]))
        discovery.chmod(0o755)
        command = [str(BIN / "horovodrun"), "-np", str(np), "--min-np", str(min_np), "--max-np", str(np),
                   "--host-discovery-script", str(discovery), "--blacklist-cooldown-range", "2", "4",
                   sys.executable, str(script), *args]
        env = {**os.environ, **QUIET_ENV, RESULTS_ENV: self.results_dir,
               "HVDTRAIN_LOCAL_SLOT_HOSTS": ",".join(SLOT_HOSTS[:np]), "HOROVOD_GLOO_TIMEOUT_SECONDS": "30"}
        with open(self.log, "w") as out:
            # A session of its own: a test that times out stops the whole job (its process group).
            self.proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO,
                                         start_new_session=True)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, ready: Callable[[], bool], timeout: float, what: str) -> None:
        """Poll ``ready()`` until it holds; fail (stopping the job) if the job ends or ``timeout`` passes."""
        deadline = time.monotonic() + timeout
        while not ready():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"gave up waiting for {what} (rc {self.proc.returncode})\n{self.output()[-6000:]}")
            time.sleep(0.2)

    def kill_worker(self, rank: int) -> int:
        """SIGKILL the worker that started as ``rank`` (its Python process, not horovodrun's ``sh -c``); its pid."""
        pids = [pid for pid in _python_pids() if _started_as(pid, self.results_dir, rank)]
        assert len(pids) == 1, f"found workers {pids} of rank {rank}\n{self.output()[-3000:]}"
        os.kill(pids[0], signal.SIGKILL)
        return pids[0]

    def wait(self, timeout: float) -> int:
        """The job's exit status; stops it and fails past ``timeout`` seconds."""
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            raise AssertionError(f"the elastic job ran past {timeout:.0f} s\n{self.output()[-6000:]}") from None

    def results(self) -> dict[int, dict]:
        """What the workers that finished reported (``tests.launch.report``), keyed by their final rank."""
        found = (json.loads(path.read_text()) for path in Path(self.results_dir).glob("rank*.json"))
        return {payload["rank"]: payload for payload in found}

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def _python_pids() -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and (entry / "comm").read_text().strip().startswith("python"):
                pids.append(int(entry.name))
        except OSError:  # the process ended meanwhile
            continue
    return pids


def _started_as(pid: int, results_dir: str, rank: int) -> bool:
    """Whether ``pid`` is this job's worker launched as ``rank`` (read from its environment)."""
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return False
    return (f"{RESULTS_ENV}={results_dir}".encode() in environ
            and f"HOROVOD_RANK={rank}".encode() in environ)
