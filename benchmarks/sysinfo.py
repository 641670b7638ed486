"""Describe the machine and software a benchmark ran on (without importing frameworks)."""
from __future__ import annotations

import importlib.metadata
import os
import platform
import re
import subprocess
from pathlib import Path


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo (or the platform's best guess)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def cpu_flags() -> list[str]:
    """The vector instruction sets the CPU advertises (AVX2, AVX-512, ...)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    match = re.search(r"^flags\s*:\s*(.*)$", text, re.MULTILINE)
    flags = set(match.group(1).split()) if match else set()
    return sorted(f for f in flags if f in {"avx", "avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni"})


def memory_gib() -> float | None:
    """Total memory in GiB."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / (1 << 20), 1)
    except OSError:
        pass
    return None


def gpus() -> list[str]:
    """Model names of the NVIDIA GPUs the driver lists (none when there is no driver)."""
    names = []
    for info in sorted(Path("/proc/driver/nvidia/gpus").glob("*/information")):
        try:
            match = re.search(r"^Model:\s*(.+)$", info.read_text(errors="replace"), re.MULTILINE)
        except OSError:
            match = None
        names.append(match.group(1).strip() if match else "unknown")
    return names


def package_version(name: str) -> str:
    """Installed version of a distribution, or "not installed"."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def open_mpi_version() -> str:
    """``mpirun --version`` (first line), or "not found"."""
    try:
        out = subprocess.run(["mpirun", "--version"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "not found"
    first = out.strip().splitlines()[0] if out.strip() else "unknown"
    return first


def describe() -> dict[str, object]:
    """Everything the report states about the machine and the software."""
    tf = package_version("tensorflow-cpu")
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "cpu_flags": cpu_flags(),
        "memory_gib": memory_gib(),
        "gpus": gpus(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "torch": package_version("torch"),
        "tensorflow": tf if tf != "not installed" else package_version("tensorflow"),
        "keras": package_version("keras"),
        "horovod": package_version("horovod"),
        "open_mpi": open_mpi_version(),
        "mpi4py": package_version("mpi4py"),
        "lightning": package_version("lightning"),  # the peers (requirements-bench.txt)
        "accelerate": package_version("accelerate"),
    }
