"""The machine ``hvdtrain run`` and ``hvdtrain doctor`` run on, as one value: interpreter, launchers, cores,
GPUs, root or not, environment, and the Slurm allocation it runs in."""
from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from hvdtrain.launcher.allocation import Allocation, slurm_allocation


@dataclass(frozen=True)
class Machine:
    """What the launching machine offers; ``detect_machine()`` fills it in for this one."""

    python: str
    horovodrun: str | None
    mpirun: str | None
    cpu_count: int
    is_root: bool
    environ: Mapping[str, str] = field(default_factory=dict)
    has_gpu: bool = False
    allocation: Allocation | None = None
    gpus: int = 0


def find_tool(name: str, python: str = sys.executable, environ: Mapping[str, str] | None = None) -> str | None:
    """``name`` next to ``python`` (its venv's bin directory) if there, else on PATH, else None."""
    beside = Path(python).parent / name
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    path = (environ if environ is not None else os.environ).get("PATH")
    return shutil.which(name, path=path)


def usable_cpus() -> int:
    """CPUs this process may run on (a container's or taskset's limit, not the host's core count)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0)) or 1
    return os.cpu_count() or 1


def detect_machine() -> Machine:
    """Describe the machine this process runs on, and the Slurm allocation it runs in (if any).

    Raises:
        LaunchError: ``SLURM_JOB_ID`` is set but the allocation cannot be read.
    """
    environ = dict(os.environ)
    gpus = local_gpus()
    return Machine(python=sys.executable, horovodrun=find_tool("horovodrun"), mpirun=find_tool("mpirun"),
                   cpu_count=usable_cpus(), is_root=hasattr(os, "geteuid") and os.geteuid() == 0,
                   environ=environ, has_gpu=gpus > 0, allocation=slurm_allocation(environ), gpus=gpus)


def local_gpus(dev: str | os.PathLike = "/dev") -> int:
    """NVIDIA GPUs of this machine (its /dev/nvidiaN devices), without loading CUDA."""
    return sum(1 for path in Path(dev).glob("nvidia*") if path.name[len("nvidia"):].isdigit())
