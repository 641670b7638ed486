"""Framework-free helpers shared by the benchmark workers and the driver.

Nothing here imports torch, TensorFlow or Horovod, so the driver can import it
cheaply and every worker sees the same data, timing and result format.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

#: Prefix of the one line each worker rank prints with its results.
RESULT_MARKER = "BENCH_RESULT "
#: Prefix of the line a worker prints when the code it benchmarks cannot be driven.
UNAVAILABLE_MARKER = "BENCH_UNAVAILABLE "

#: Model names understood by every worker; "tiny-*" are for ``--quick``.
MODELS = ("mlp", "cnn", "tiny-mlp", "tiny-cnn")

NUM_CLASSES = 10
IMAGE_SIDE = 28
FEATURES = IMAGE_SIDE * IMAGE_SIDE
#: SGD momentum of every benchmark optimizer, PyTorch and Keras.
MOMENTUM = 0.9


def is_conv(model: str) -> bool:
    """True for the convolutional models, whose inputs are 1x28x28 images."""
    return model.endswith("cnn")


def synthetic_data(num_samples: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A fixed, learnable classification data set shared by every framework.

    Inputs are standard normal 784-vectors; labels come from a fixed random
    linear "teacher", so the loss actually falls and a broken gradient
    averaging shows up as a loss that does not.

    Args:
        num_samples: number of samples.
        seed: NumPy seed; the same seed gives the same data in every process.

    Returns:
        ``(x, y)``: float32 ``[num_samples, 784]`` and int64 ``[num_samples]``.
    """
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((num_samples, FEATURES), dtype=np.float32)
    teacher = rng.standard_normal((FEATURES, NUM_CLASSES), dtype=np.float32)
    y = np.argmax(x @ teacher, axis=1).astype(np.int64)
    return x, y


def shard(num_samples: int, rank: int, size: int) -> slice:
    """The contiguous block of a data set owned by ``rank`` of ``size``."""
    per_rank = num_samples // size
    return slice(rank * per_rank, (rank + 1) * per_rank)


def model_list(text: str) -> list[str]:
    """Parse ``--model mlp,cnn``; every name must be in ``MODELS``."""
    names = [name for name in text.split(",") if name]
    unknown = [name for name in names if name not in MODELS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown model(s) {unknown}; choose from {', '.join(MODELS)}")
    return names


def add_workload_args(parser: argparse.ArgumentParser) -> None:
    """Arguments every throughput worker accepts."""
    parser.add_argument("--model", type=model_list, default=["mlp"], dest="models",
                        help="model, or comma-separated models measured one after another in this process")
    parser.add_argument("--batch-size", type=int, default=128, help="per worker")
    parser.add_argument("--warmup", type=int, default=20, help="untimed steps first")
    parser.add_argument("--steps", type=int, default=50, help="steps per timed window")
    parser.add_argument("--repeats", type=int, default=3, help="timed windows; the median is reported")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads per worker")
    parser.add_argument("--samples-per-rank", type=int, default=8192)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--variant", default="", help="label echoed in the result")


class WindowTimer:
    """Marks the end of the warmup and of each timed window of steps.

    Call ``tick()`` once after every completed optimizer step.
    """

    def __init__(self, warmup: int, steps: int, repeats: int) -> None:
        self.warmup = warmup
        self.steps = steps
        self.repeats = repeats
        self.step = 0
        self.marks: list[float] = []

    @property
    def total_steps(self) -> int:
        """Steps to run: warmup plus every window."""
        return self.warmup + self.steps * self.repeats

    @property
    def timing(self) -> bool:
        """True while the next step falls inside a timed window."""
        return self.warmup <= self.step < self.total_steps

    @property
    def done(self) -> bool:
        return self.step >= self.total_steps

    def begin(self) -> None:
        """Call once before the first step (starts the clock if there is no warmup)."""
        if self.warmup == 0 and not self.marks:
            self.marks.append(time.perf_counter())

    def tick(self) -> bool:
        """Count one finished step; returns True when all windows are done."""
        self.step += 1
        offset = self.step - self.warmup
        if offset == 0 or (offset > 0 and offset % self.steps == 0 and len(self.marks) <= self.repeats):
            self.marks.append(time.perf_counter())
        return self.done

    def restart_window(self) -> None:
        """Move the start of the current window to now (e.g. after a barrier)."""
        if self.marks:
            self.marks[-1] = time.perf_counter()

    def window_seconds(self) -> list[float]:
        """Duration of each finished window."""
        return [b - a for a, b in zip(self.marks, self.marks[1:])]


class PhaseClock:
    """Accumulates wall time per named phase of a step, only while enabled."""

    def __init__(self) -> None:
        self.totals: dict[str, float] = {}
        self.enabled = False
        self._last = time.perf_counter()

    def reset(self) -> None:
        """Start timing the next phase from now."""
        self._last = time.perf_counter()

    def lap(self, name: str) -> None:
        """Charge the time since the previous lap to ``name``."""
        now = time.perf_counter()
        if self.enabled:
            self.totals[name] = self.totals.get(name, 0.0) + now - self._last
        self._last = now

    def per_step_ms(self, steps: int) -> dict[str, float]:
        """Mean milliseconds per step of each phase."""
        return {k: round(1000.0 * v / max(steps, 1), 3) for k, v in self.totals.items()}


@dataclass
class ThroughputResult:
    """What one worker rank reports for a throughput measurement."""

    variant: str
    model: str
    rank: int
    size: int
    batch_size: int
    threads: int
    warmup: int
    steps: int
    window_seconds: list[float]
    loss_first: float | None = None
    loss_last: float | None = None
    phases_ms: dict[str, float] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    window_marks: list[float] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict with the derived throughput figures."""
        local = [self.batch_size * self.steps / s for s in self.window_seconds if s > 0]
        median_local = statistics.median(local) if local else 0.0
        return {
            "variant": self.variant, "model": self.model, "rank": self.rank, "size": self.size,
            "batch_size": self.batch_size, "threads": self.threads, "warmup": self.warmup,
            "steps": self.steps, "window_seconds": [round(s, 5) for s in self.window_seconds],
            "local_samples_per_sec": round(median_local, 2),
            "local_samples_per_sec_windows": [round(v, 2) for v in local],
            # Ranks run in lockstep (every step ends in an allreduce), so the
            # job's throughput is this rank's times the number of ranks.
            "samples_per_sec": round(median_local * self.size, 2),
            "step_ms": round(1000.0 * self.batch_size / median_local, 3) if median_local else None,
            "loss_first": self.loss_first, "loss_last": self.loss_last,
            "phases_ms": self.phases_ms, "extra": self.extra,
            # time.perf_counter() is CLOCK_MONOTONIC, shared by all processes on
            # the machine: the driver matches these marks with its load samples.
            "window_marks": [round(m, 4) for m in self.window_marks],
        }


def emit(result: dict[str, Any]) -> None:
    """Print one result line for the driver (every rank prints its own)."""
    sys.stdout.write(RESULT_MARKER + json.dumps(result, sort_keys=True) + "\n")
    sys.stdout.flush()


def unavailable_reason(text: str) -> str | None:
    """The reason a worker gave (a ``UNAVAILABLE_MARKER`` line) for not being able to run, if it gave one."""
    for line in text.splitlines():
        pos = line.find(UNAVAILABLE_MARKER)
        if pos >= 0:
            return line[pos + len(UNAVAILABLE_MARKER):].strip()
    return None


def parse_results(text: str) -> list[dict[str, Any]]:
    """Every result line in a launcher's combined output.

    Launchers prefix lines (``[1,0]<stdout>:`` or ``[0]<stdout>:``), so the
    marker is searched anywhere in the line.
    """
    results = []
    for line in text.splitlines():
        pos = line.find(RESULT_MARKER)
        if pos < 0:
            continue
        try:
            results.append(json.loads(line[pos + len(RESULT_MARKER):]))
        except json.JSONDecodeError:
            continue
    return results


def env_world() -> tuple[int, int]:
    """``(rank, size)`` of an independent (no-communication) process."""
    return int(os.environ.get("BENCH_RANK", "0")), int(os.environ.get("BENCH_SIZE", "1"))


class FileBarrier:
    """A barrier between independent processes through marker files.

    The no-communication ceiling has no collectives, but its processes must
    time the same period, so they meet here after warmup and keep the CPU
    busy until every process has finished its windows.
    """

    def __init__(self, directory: str | None, rank: int, size: int) -> None:
        self.directory = Path(directory) if directory else None
        self.rank = rank
        self.size = size

    def arrive(self, name: str) -> None:
        """Announce that this process reached ``name``."""
        if self.directory is not None:
            (self.directory / f"{name}.{self.rank}").touch()

    def everyone(self, name: str) -> bool:
        """True once every process has arrived at ``name``."""
        if self.directory is None:
            return True
        return len(list(self.directory.glob(f"{name}.*"))) >= self.size

    def wait(self, name: str, timeout: float = 120.0) -> None:
        """Block until every process arrived at ``name`` (or the timeout)."""
        deadline = time.monotonic() + timeout
        while not self.everyone(name) and time.monotonic() < deadline:
            time.sleep(0.005)


def set_thread_env(threads: int) -> None:
    """Cap OpenMP/MKL threads before a framework is imported."""
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(threads)


def parameter_shapes(model: str) -> list[tuple[int, ...]]:
    """Shapes of a benchmark model's trainable tensors, one gradient tensor each, in PyTorch's order.

    Keras holds the same tensors (its dense kernels transposed).
    """
    def dense(n_in: int, n_out: int) -> list[tuple[int, ...]]:
        return [(n_out, n_in), (n_out,)]

    def conv(c_in: int, c_out: int) -> list[tuple[int, ...]]:
        return [(c_out, c_in, 3, 3), (c_out,)]

    if model.endswith("mlp"):
        hidden = 2048 if model == "mlp" else 64
        return dense(FEATURES, hidden) + dense(hidden, hidden) + dense(hidden, NUM_CLASSES)
    c1, c2, hidden = (32, 64, 128) if model == "cnn" else (4, 8, 16)
    flat = c2 * (IMAGE_SIDE // 4) ** 2
    return conv(1, c1) + conv(c1, c2) + dense(flat, hidden) + dense(hidden, NUM_CLASSES)


def parameter_count(model: str) -> int:
    """Trainable parameters of a benchmark model (same in PyTorch and Keras)."""
    return sum(math.prod(shape) for shape in parameter_shapes(model))


#: The overhead benchmark's tiny model (``benchmarks.overhead``): inputs and hidden units; NUM_CLASSES outputs.
TINY_FEATURES = TINY_HIDDEN = 32


#: Set by ``benchmarks.overhead --compare-with``: the checkout whose ``hvdtrain`` an overhead worker imports.
COMPARED_CHECKOUT_ENV = "HVDTRAIN_BENCH_SOURCE"


def import_hvdtrain_from_compared_checkout() -> None:
    """Put ``COMPARED_CHECKOUT_ENV``'s checkout first on ``sys.path`` (call once ``benchmarks`` is imported, so
    only ``hvdtrain`` comes from there)."""
    if os.environ.get(COMPARED_CHECKOUT_ENV):
        sys.path.insert(0, os.environ[COMPARED_CHECKOUT_ENV])


def add_overhead_args(parser: argparse.ArgumentParser) -> None:
    """Arguments every overhead worker accepts (``benchmarks/workers/overhead_*.py``)."""
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--samples-per-rank", type=int, default=6400)
    parser.add_argument("--warmup-epochs", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--variant", default="")


def overhead_result(args: argparse.Namespace, rank: int, size: int, epoch_seconds: list[float]) -> dict[str, Any]:
    """An overhead worker's result: the microseconds per step of each timed epoch (after the warmup ones)."""
    steps = args.samples_per_rank // args.batch_size
    timed = epoch_seconds[args.warmup_epochs:]
    return {"variant": args.variant or f"{args.loop}-{args.comm}", "loop": args.loop, "comm": args.comm,
            "rank": rank, "size": size, "steps_per_epoch": steps, "batch_size": args.batch_size,
            "us_per_step": [round(1e6 * seconds / steps, 2) for seconds in timed]}
