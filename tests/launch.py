"""Run a Python script on N real Horovod workers (horovodrun or mpirun) from a test."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
RESULTS_ENV = "HVDTRAIN_TEST_RESULTS"
QUIET_ENV = {"TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1",
             "PYTHONPATH": str(REPO)}


def launch_command(script: str | os.PathLike, args: list[str], np: int = 2, launcher: str = "horovodrun") -> list[str]:
    """The argv that starts ``script`` on ``np`` workers with ``launcher`` ("horovodrun" or "mpirun")."""
    python = [sys.executable, str(script), *args]
    if launcher == "horovodrun":
        return [str(BIN / "horovodrun"), "-np", str(np), "--gloo", *python]
    if launcher == "mpirun":
        assert shutil.which("mpirun"), "mpirun is not on PATH; run `make setup` (installs openmpi-bin)"
        return ["mpirun", "-np", str(np), "--allow-run-as-root", "--oversubscribe", "--bind-to", "none",
                "--mca", "mpi_yield_when_idle", "1", "-x", "PYTHONPATH", "-x", "OMP_NUM_THREADS",
                "-x", "TF_CPP_MIN_LOG_LEVEL", "-x", "PYTHONUNBUFFERED", "-x", RESULTS_ENV, *python]
    raise ValueError(f"unknown launcher {launcher!r}")


def run_workers(script: str | os.PathLike, args: list[str] = (), np: int = 2, launcher: str = "horovodrun",
                timeout: float = 300, check: bool = True, env: dict[str, str] | None = None,
                ) -> subprocess.CompletedProcess:
    """Run ``script`` on ``np`` workers and return the finished process (output captured)."""
    results_dir = tempfile.mkdtemp(prefix="hvdtrain-results-")
    full_env = {**os.environ, **QUIET_ENV, RESULTS_ENV: results_dir, **(env or {})}
    proc = subprocess.run(launch_command(script, list(args), np, launcher), capture_output=True, text=True,
                          timeout=timeout, env=full_env, cwd=REPO)
    proc.results_dir = results_dir
    if check and proc.returncode != 0:
        raise AssertionError(f"{launcher} exited with {proc.returncode}\n--- stdout ---\n{proc.stdout[-6000:]}"
                             f"\n--- stderr ---\n{proc.stderr[-6000:]}")
    return proc


def report(payload: dict) -> None:
    """Called by a worker: hand its result (with a "rank" key) to the test.

    Written to a file, because under mpirun long stdout lines of two ranks can interleave.
    """
    directory = os.environ.get(RESULTS_ENV)
    if directory is None:
        print("RESULT " + json.dumps(payload), flush=True)
        return
    path = Path(directory) / f"rank{payload['rank']}.json"
    path.with_suffix(".tmp").write_text(json.dumps(payload))
    path.with_suffix(".tmp").rename(path)


def results(output: str | subprocess.CompletedProcess, tag: str = "RESULT") -> dict[int, dict]:
    """Results reported by workers (``report``) or printed as ``RESULT {json}`` lines, keyed by rank."""
    if isinstance(output, subprocess.CompletedProcess):
        files = sorted(Path(output.results_dir).glob("rank*.json"))
        if files:
            return {payload["rank"]: payload for payload in (json.loads(f.read_text()) for f in files)}
        output = output.stdout
    found = {}
    for line in output.splitlines():
        marker = line.find(tag + " ")
        if marker >= 0:
            payload = json.loads(line[marker + len(tag) + 1:])
            found[payload["rank"]] = payload
    return found


def rank_errors(proc: subprocess.CompletedProcess, np: int = 2) -> dict[int, str]:
    """The error each rank reported (workers run with ``--expect-error``); fails unless every rank reported one."""
    found = results(proc)
    output = f"\n--- stdout ---\n{proc.stdout[-6000:]}\n--- stderr ---\n{proc.stderr[-6000:]}"
    assert proc.returncode != 0, f"the job succeeded{output}"
    assert sorted(found) == list(range(np)), f"ranks {sorted(found)} reported, not all {np}{output}"
    missing = [rank for rank, payload in found.items() if "error" not in payload]
    assert not missing, f"ranks {missing} finished without an error{output}"
    return {rank: payload["error"] for rank, payload in found.items()}


ELASTIC_ENV = {"HOROVOD_GLOO_TIMEOUT_SECONDS": "5", "HVDTRAIN_HEARTBEAT_TIMEOUT": "15"}


def start_elastic(script: str | os.PathLike, args: list[str], np: int = 3, min_np: int = 2, max_np: int = 3,
                  cooldown: tuple[int, int] = (3, 5), env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start ``hvdtrain run --elastic`` on this machine's local slots; output goes to ``proc.log``.

    ``env`` overrides ``ELASTIC_ENV``: e.g. a longer ``HOROVOD_GLOO_TIMEOUT_SECONDS``, which must cover
    a joining worker's start (the others wait for it at the rendezvous).
    """
    results_dir = tempfile.mkdtemp(prefix="hvdtrain-results-")
    log = Path(results_dir) / "launcher.log"
    command = [str(BIN / "hvdtrain"), "run", "--elastic", "-np", str(np), "--min-np", str(min_np),
               "--max-np", str(max_np), "--blacklist-cooldown-range", *map(str, cooldown),
               str(script), *args]
    env = {**os.environ, **QUIET_ENV, **ELASTIC_ENV, RESULTS_ENV: results_dir, **(env or {})}
    with open(log, "w") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, text=True, env=env, cwd=REPO)
    proc.results_dir, proc.log = results_dir, log
    return proc


def worker_pids(marker: str) -> dict[int, int]:
    """{Horovod rank: pid} of the worker processes (not their launch shells or agents) whose command
    line holds ``marker``."""
    found = {}
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            environ = dict(line.split(b"=", 1) for line in (entry / "environ").read_bytes().split(b"\0")
                           if b"=" in line)
        except OSError:
            continue
        is_python = Path(argv[0].decode(errors="replace")).name.startswith("python")
        if is_python and marker.encode() in b" ".join(argv) and b"hvdtrain.launcher.agent" not in argv \
                and b"HOROVOD_RANK" in environ:
            found[int(environ[b"HOROVOD_RANK"])] = int(entry.name)
    return found


def finish_elastic(proc: subprocess.Popen, timeout: float) -> str:
    """Wait for a ``start_elastic`` job (killing it past ``timeout``); returns its output."""
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise AssertionError(f"the elastic job ran past {timeout} s:\n{proc.log.read_text()[-5000:]}") from None
    return proc.log.read_text()


def elastic_reports(proc: subprocess.Popen) -> dict[int, dict]:
    """What the workers of a ``start_elastic`` job reported (``report``), keyed by their final rank."""
    return {int(f.stem.removeprefix("rank")): json.loads(f.read_text())
            for f in Path(proc.results_dir).glob("rank*.json")}


def wait_for(condition: Callable[[], bool], proc: subprocess.Popen, timeout: float) -> None:
    """Poll ``condition()`` while the job runs; fail (killing the job) if it ends or ``timeout`` passes first."""
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"the job never got there:\n{proc.log.read_text()[-5000:]}")
        time.sleep(0.2)


def reached_epoch(checkpoints: Path, epoch: int) -> bool:
    """Whether ``checkpoints`` holds one of epoch ``epoch`` or later (retention prunes the early ones)."""
    found = (re.search(r"epoch(\d+)", entry.name) for entry in checkpoints.glob("*epoch*"))
    return any(int(match[1]) >= epoch for match in found if match)


def assert_rank_zero_outputs(out: Path, epochs: int) -> None:
    """Rank 0's files of a digits example run into ``out``: one CSV row per epoch, TensorBoard scalars for
    every epoch, and the final epoch's checkpoint (whichever processes held rank 0 along the way)."""
    import csv

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    with open(out / "metrics.csv", newline="") as f:
        rows = [int(row["epoch"]) for row in csv.DictReader(f)]
    assert rows == list(range(1, epochs + 1)), f"metrics.csv has the epochs {rows}"
    events = EventAccumulator(str(out))
    events.Reload()
    logged = {event.step for event in events.Scalars("epoch/val_accuracy")}
    assert logged == set(range(1, epochs + 1)), f"TensorBoard misses the epochs {set(range(1, epochs + 1)) - logged}"
    assert list((out / "checkpoints").glob(f"*epoch{epochs:04d}*")), sorted((out / "checkpoints").iterdir())
