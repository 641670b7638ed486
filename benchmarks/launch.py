"""Start benchmark workers under each launcher and collect their result lines.

Every launch runs in its own session with a timeout; on timeout the whole
process group is killed, so a wedged collective cannot hang the benchmark.
"""
from __future__ import annotations

import itertools
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.common import parse_results

REPO = Path(__file__).resolve().parents[1]
WORKERS = REPO / "benchmarks" / "workers"
BIN = Path(sys.executable).parent

#: Open MPI flags of the tuned MPI launch: never spin on an idle core, let the
#: OS place threads (binding both a rank's compute and its Horovod thread to
#: one core serializes them).
MPI_FAST = ("--bind-to", "none", "--mca", "mpi_yield_when_idle", "1")

QUIET_ENV = {"PYTHONUNBUFFERED": "1", "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(REPO),
             "KERAS_BACKEND": "tensorflow", "PYTHONWARNINGS": "ignore"}

LAUNCHERS = ("mpirun", "horovodrun-gloo", "torchrun", "independent", "hvdtrain")


@dataclass
class Launch:
    """One worker job: which launcher, how many ranks, which script and settings.

    Attributes:
        launcher: one of ``LAUNCHERS``.
        np: number of worker processes.
        script: worker script path.
        args: worker arguments.
        env: extra environment for the workers (e.g. HOROVOD_* knobs).
        mpi_args: Open MPI flags for the "mpirun" launcher (default ``MPI_FAST``).
    """

    launcher: str
    np: int
    script: Path
    args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    mpi_args: tuple[str, ...] = MPI_FAST

    def command(self) -> list[str]:
        """The argv of this launch (for "independent": the argv of each process)."""
        python = [sys.executable, str(self.script), *self.args]
        if self.launcher == "mpirun":
            exported = [a for name in sorted({*QUIET_ENV, *self.env}) for a in ("-x", name)]
            return ["mpirun", "--allow-run-as-root", "--oversubscribe", "-np", str(self.np),
                    *self.mpi_args, *exported, *python]
        if self.launcher == "horovodrun-gloo":
            return [str(BIN / "horovodrun"), "-np", str(self.np), "--gloo", *python]
        if self.launcher == "torchrun":
            return [sys.executable, "-m", "torch.distributed.run", "--standalone",
                    "--nproc_per_node", str(self.np), *python[1:]]
        if self.launcher == "hvdtrain":
            return [*hvdtrain_cli(), "run", "-np", str(self.np), *python[1:]]
        if self.launcher == "independent":
            return python
        raise ValueError(f"unknown launcher {self.launcher!r}")

    def display(self) -> str:
        """The command as a shell line, with its extra environment in front."""
        env = " ".join(f"{k}={shlex.quote(v)}" for k, v in sorted(self.env.items()))
        cmd = shlex.join(self.command()).replace(str(REPO) + "/", "").replace(sys.executable, "python")
        if self.launcher == "independent":
            cmd = f"{self.np} x [BENCH_RANK=r BENCH_SIZE={self.np} {cmd}]"
        return f"{env} {cmd}".strip()


def hvdtrain_cli() -> list[str]:
    """The argv prefix of the ``hvdtrain`` command (installed script, or the module)."""
    script = BIN / "hvdtrain"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "import sys; from hvdtrain.cli import main; sys.argv[0] = 'hvdtrain'; "
            "sys.exit(main())"]


@dataclass
class Outcome:
    """What came back from a launch."""

    ok: bool
    results: list[dict[str, Any]]
    seconds: float
    returncode: int | None
    tail: str
    foreign_cpu: float
    load_samples: list[tuple[float, float, float]] = field(default_factory=list)

    def rank0(self) -> dict[str, Any] | None:
        """The result reported by rank 0, if any."""
        return next((r for r in self.results if r.get("rank") == 0), None)


def _kill(proc: subprocess.Popen) -> None:
    """Kill the launch's process group and every process below it: torchrun starts its workers in
    sessions of their own, and a survivor would hold the output pipe open."""
    import psutil

    try:
        below = psutil.Process(proc.pid).children(recursive=True)
    except psutil.Error:
        below = []
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    for child in below:
        try:
            child.kill()
        except psutil.Error:
            pass
    proc.wait()


def _cpu_ticks() -> tuple[float, float]:
    """(busy, total) jiffies of the whole machine, from /proc/stat."""
    try:
        fields = [float(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except OSError:
        return 0.0, 0.0
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)
    return sum(fields[:8]) - idle, sum(fields[:8])


def machine_busy(seconds: float = 0.5) -> float:
    """Cores in use over ``seconds`` (by anything: call when nothing of ours runs)."""
    busy0, _ = _cpu_ticks()
    time.sleep(seconds)
    busy1, _ = _cpu_ticks()
    return (busy1 - busy0) / os.sysconf("SC_CLK_TCK") / seconds


def wait_for_quiet(max_wait: float, threshold: float = 0.3) -> float:
    """Wait (up to ``max_wait`` s) until other work on the machine drops below ``threshold`` cores.

    Returns:
        The last measured load, in cores.
    """
    deadline = time.monotonic() + max_wait
    load = machine_busy()
    while load > threshold and time.monotonic() < deadline:
        load = machine_busy(1.0)
    return load


def run(launch: Launch, timeout: float) -> Outcome:
    """Run ``launch`` to completion (or timeout) and parse its result lines."""
    env = {**os.environ, **QUIET_ENV, **launch.env, "OMP_NUM_THREADS": _threads(launch.args)}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    sampler = LoadSampler()
    sampler.start()
    start = time.monotonic()
    try:
        if launch.launcher == "independent":
            ok, code, text = _run_independent(launch, env, timeout)
        else:
            ok, code, text = _run_one(launch.command(), env, timeout)
    finally:
        sampler.stop()
    seconds = time.monotonic() - start
    results = parse_results(text)
    return Outcome(ok and bool(results), results, seconds, code, text[-3000:], round(sampler.mean_foreign(), 3),
                   sampler.samples)


class LoadSampler(threading.Thread):
    """Samples the CPU that processes other than this driver and its children use.

    Every ``interval`` seconds it compares the machine's busy time
    (/proc/stat) with the CPU time of this process tree (/proc/PID/stat), so
    each timed window of a worker can be checked for outside interference.

    Attributes:
        samples: ``(start, end, foreign cores)`` per interval, times from
            ``time.perf_counter()`` (the same clock the workers mark windows with).
    """

    def __init__(self, interval: float = 0.25) -> None:
        super().__init__(daemon=True)
        self.interval = interval
        self.samples: list[tuple[float, float, float]] = []
        self._stop_event = threading.Event()
        self._hz = os.sysconf("SC_CLK_TCK")

    def run(self) -> None:
        busy, ours, t = _cpu_ticks()[0], _tree_ticks(os.getpid()), time.perf_counter()
        while not self._stop_event.wait(self.interval):
            busy2, ours2, t2 = _cpu_ticks()[0], _tree_ticks(os.getpid()), time.perf_counter()
            own = sum(v - ours.get(pid, 0.0) for pid, v in ours2.items())
            foreign = max(0.0, (busy2 - busy) - own) / self._hz / max(t2 - t, 1e-6)
            self.samples.append((round(t, 4), round(t2, 4), round(foreign, 3)))
            busy, ours, t = busy2, ours2, t2

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=5)

    def mean_foreign(self) -> float:
        """Average foreign load over the whole launch, in cores."""
        total = sum(b - a for a, b, _ in self.samples)
        return sum((b - a) * f for a, b, f in self.samples) / total if total else 0.0


def _tree_ticks(root: int) -> dict[int, float]:
    """CPU jiffies (user + system) of ``root`` and all its descendants, by pid."""
    parents, ticks = {}, {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        pid = int(stat.parent.name)
        parents[pid] = int(fields[1])
        ticks[pid] = float(fields[11]) + float(fields[12])
    tree, frontier = {root}, [root]
    while frontier:
        parent = frontier.pop()
        children = [pid for pid, ppid in parents.items() if ppid == parent and pid not in tree]
        tree.update(children)
        frontier.extend(children)
    return {pid: ticks[pid] for pid in tree if pid in ticks}


def window_loads(marks: list[float], samples: list[tuple[float, float, float]]) -> list[float]:
    """Mean foreign load (cores) during each window between consecutive ``marks``."""
    loads = []
    for a, b in itertools.pairwise(marks):
        weight = total = 0.0
        for start, end, foreign in samples:
            overlap = min(b, end) - max(a, start)
            if overlap > 0:
                weight += overlap
                total += overlap * foreign
        loads.append(round(total / weight, 3) if weight else 0.0)
    return loads


def _threads(args: list[str]) -> str:
    return args[args.index("--threads") + 1] if "--threads" in args else "1"


def _run_one(argv: list[str], env: dict[str, str], timeout: float) -> tuple[bool, int | None, str]:
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env, cwd=REPO, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill(proc)
        out = (proc.stdout.read() if proc.stdout else "") + f"\n[timeout after {timeout:.0f} s]"
        return False, None, out
    return proc.returncode == 0, proc.returncode, out


def _run_independent(launch: Launch, env: dict[str, str],
                     timeout: float) -> tuple[bool, int | None, str]:
    """Start ``np`` unconnected processes at once (the no-communication ceiling)."""
    with tempfile.TemporaryDirectory(prefix="bench-barrier-") as barrier:
        procs, files = [], []
        for rank in range(launch.np):
            out = tempfile.TemporaryFile(mode="w+")
            rank_env = {**env, "BENCH_RANK": str(rank), "BENCH_SIZE": str(launch.np),
                        "BENCH_BARRIER_DIR": barrier}
            procs.append(subprocess.Popen(launch.command(), stdout=out, stderr=subprocess.STDOUT, text=True,
                                          env=rank_env, cwd=REPO, start_new_session=True))
            files.append(out)
        deadline = time.monotonic() + timeout
        ok, code = True, 0
        for proc in procs:
            try:
                proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                _kill(proc)
                ok = False
            code = code or proc.returncode
        text = ""
        for out in files:
            out.seek(0)
            text += out.read()
            out.close()
    return ok and code == 0, code, text
