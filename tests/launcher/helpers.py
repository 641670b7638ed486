"""Run the real ``hvdtrain`` command in a child process, and tiny worker scripts for it."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TIMEOUT = 180
QUIET = {"TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}

# hvd.init with horovod.torch, then an allreduce and a broadcast; every rank prints one line.
TORCH_WORKER = r"""
import sys
import horovod.torch as hvd
import torch

hvd.init()
total = hvd.allreduce(torch.tensor([float(hvd.rank() + 1)]), op=hvd.Sum).item()
root = hvd.broadcast(torch.tensor([float(hvd.rank() + 10)]), root_rank=0).item()
sys.stdout.write(f"WORKER rank={hvd.rank()} size={hvd.size()} sum={total:g} bcast={root:g} args={sys.argv[1:]}\n")
sys.stdout.flush()
"""


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This environment plus quiet framework logs and the repository on PYTHONPATH."""
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    return {**os.environ, **QUIET, "PYTHONPATH": path, **(extra or {})}


def hvdtrain(*args: str, cwd: str | os.PathLike = REPO, timeout: float = TIMEOUT,
             env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``hvdtrain ARGS`` (as ``python -m hvdtrain.cli``) with output captured."""
    return subprocess.run([sys.executable, "-m", "hvdtrain.cli", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=timeout, env=child_env(env))


def write_script(directory: Path, text: str = TORCH_WORKER, name: str = "worker.py") -> Path:
    """Write a worker script into ``directory`` and return its path."""
    path = directory / name
    path.write_text(text)
    return path


def worker_lines(output: str) -> list[str]:
    """The ``WORKER ...`` reports (launcher prefixes such as ``[0]<stdout>:`` dropped), sorted by rank."""
    return sorted(re.findall(r"WORKER rank=\d+ size=\d+ sum=\S+ bcast=\S+ args=\[[^\]]*\]", output))


def alive(pid: int) -> bool:
    """Whether process ``pid`` still runs (a zombie has exited already)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def explain(proc: subprocess.CompletedProcess) -> str:
    """Exit status and output tails for an assertion message."""
    return f"exit {proc.returncode}\n--- stdout ---\n{proc.stdout[-4000:]}\n--- stderr ---\n{proc.stderr[-4000:]}"

# What `hvdtrain run` adds unless told otherwise: Horovod's stall inspector ends a job stalled 900 s.
STALL_SHUTDOWN = ["--stall-check-shutdown-time-seconds", "900"]


def final_accuracy(output: str) -> float | None:
    """The ``final val_accuracy=X`` that the examples and generated projects print on rank 0, if there."""
    found = re.findall(r"final val_accuracy=([0-9.]+)", output)
    return float(found[-1]) if found else None
