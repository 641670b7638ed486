"""``hvdtrain doctor``: versions, what Horovod was built with, and known problems with their fixes.

Horovod's framework extensions are loaded in child processes, so a broken extension
(wrong framework version, missing symbol, crash) is reported instead of killing the doctor.
"""
from __future__ import annotations

import importlib.metadata as metadata
import importlib.util
import json
import os
import platform
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from hvdtrain.launcher.checks import (
    RECORDED_KEYS,
    build_key_problems,
    environment_problems,
    extension_problems,
    gpu_problems,
    missing_horovod_problem,
    pipeline_problems,
    requirement_problems,
    version_problems,
)
from hvdtrain.launcher.machine import find_tool

PROBE_TIMEOUT = 180.0
BUILD_KEY_FILE = "hvdtrain-horovod-build.txt"  # written into sys.prefix by scripts/build_horovod.sh
PROBE_TAG = "HVDTRAIN_PROBE "
BUILD_FLAGS = ("mpi", "gloo", "nccl", "ddl", "ccl", "cuda", "rocm")
# Loads one Horovod extension and prints what it was built with; warnings (e.g. version mismatch) kept.
# The framework's own __version__ is what Horovod recorded (a wheel's metadata may lack the +cu130 suffix).
_PROBE = """
import json, warnings
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    import horovod.{module} as hvd
    import {module} as framework
    built = {{flag: bool(getattr(hvd, flag + "_built")()) for flag in {flags!r}}}
messages = [str(w.message) for w in caught if "horovod" in str(w.filename)]
result = {{"built": built, "warnings": messages, "framework_version": framework.__version__}}
if "{module}" == "torch":
    cuda = framework.cuda.is_available()
    result["gpus"] = {{
        "count": framework.cuda.device_count() if cuda else 0,
        "names": [framework.cuda.get_device_name(i) for i in range(framework.cuda.device_count())] if cuda else [],
        "cuda": framework.version.cuda,
        "cudnn": framework.backends.cudnn.version() if cuda else None,
        "nccl": ".".join(map(str, framework.cuda.nccl.version())) if cuda else None,
    }}
print({tag!r} + json.dumps(result), flush=True)
"""
# A pipeline's stages send with mpi4py beside Horovod's MPI thread: both need MPI_THREAD_MULTIPLE, and
# Horovod starts on an mpi4py communicator (the stage's replicas), which only works on the same MPI.
_PIPELINE_PROBE = """
import json
from mpi4py import MPI
import horovod.torch as hvd
hvd.init(comm=MPI.COMM_WORLD.Dup())
mpi = bool(hvd.mpi_enabled())
result = {{"mpi4py_threads": MPI.Query_thread() == MPI.THREAD_MULTIPLE, "horovod_mpi": mpi,
          "horovod_threads": mpi and bool(hvd.mpi_threads_supported())}}
print({tag!r} + json.dumps(result), flush=True)
"""


def distribution_version(*names: str) -> str | None:
    """The installed version of the first distribution found among ``names``."""
    for name in names:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return None


def tensorflow_version() -> str | None:
    """TensorFlow's version, whichever distribution (tensorflow, tensorflow-cpu, ...) provides it."""
    providers = metadata.packages_distributions().get("tensorflow", [])
    return distribution_version(*providers, "tensorflow", "tensorflow-cpu")


def openmpi_version(mpirun: str | None) -> str | None:
    """``mpirun --version``'s version (e.g. ``Open MPI 4.1.4``), or None without a working mpirun."""
    if not mpirun:
        return None
    try:
        out = subprocess.run([mpirun, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.search(r"\(([^)]+)\)\s+(\S+)", out)
    return f"{match[1]} {match[2]}" if match else (out.strip().splitlines() or [None])[0]


def recorded_versions() -> dict[str, str] | None:
    """The framework versions Horovod was compiled against (its ``metadata.json``), without importing it."""
    spec = importlib.util.find_spec("horovod")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "metadata.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def recorded_build_key(prefix: str = sys.prefix) -> str | None:
    """The build key ``scripts/build_horovod.sh`` left in this environment, or None."""
    try:
        return (Path(prefix) / BUILD_KEY_FILE).read_text().strip() or None
    except OSError:
        return None


def installed_versions(mpirun: str | None) -> dict[str, str | None]:
    """Versions of everything hvdtrain runs on; None where a package is not installed."""
    from hvdtrain import __version__

    return {
        "python": platform.python_version(),
        "hvdtrain": __version__,
        "horovod": distribution_version("horovod"),
        "torch": distribution_version("torch"),
        "tensorflow": tensorflow_version(),
        "openmpi": openmpi_version(mpirun),
        "mpi4py": distribution_version("mpi4py"),
    }


def start_probe(framework: str) -> subprocess.Popen:
    """Start loading ``horovod.<framework>`` in a child interpreter (this one)."""
    return start_code(_PROBE.format(module=framework, flags=BUILD_FLAGS, tag=PROBE_TAG))


def start_code(code: str) -> subprocess.Popen:
    """Start ``code`` in a child interpreter (this one); it prints its result after ``PROBE_TAG``."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONWARNINGS": "ignore::DeprecationWarning"}
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)


def finish_probe(proc: subprocess.Popen, timeout: float = PROBE_TIMEOUT) -> dict[str, Any]:
    """Wait for a probe: ``{"loads", "built", "warnings", "framework_version", "error"}``."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        return _failed(f"loading timed out after {timeout:g} s")
    for line in out.splitlines():
        if line.startswith(PROBE_TAG):
            result = json.loads(line[len(PROBE_TAG):])
            return {"loads": True, "error": None, **result}
    return _failed(exception_text(err, proc.returncode))


def _failed(error: str) -> dict[str, Any]:
    return {"loads": False, "built": {}, "warnings": [], "framework_version": None, "error": error}


def exception_text(stderr: str, returncode: int) -> str:
    """The exception at the end of a traceback, or how the process died."""
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    starts = [i for i, line in enumerate(lines) if re.match(r"^[A-Za-z_][\w.]*(Error|Exception|Interrupt)\b", line)]
    if starts:
        return " ".join(line.strip() for line in lines[starts[-1]:])
    if returncode < 0:
        return f"the interpreter died from signal {-returncode} while loading it"
    return " ".join(lines[-3:]) or f"exited with status {returncode} and no message"


def probe_extensions(installed: dict[str, str | None]) -> dict[str, dict[str, Any]]:
    """Load the Horovod extension of every installed framework, in parallel child processes."""
    running = {name: start_probe(name) for name in ("torch", "tensorflow") if installed.get(name)}
    return {name: finish_probe(proc) for name, proc in running.items()}


def build_summary(extensions: dict[str, dict[str, Any]]) -> dict[str, dict[str, bool]]:
    """Frameworks, controllers and tensor operations Horovod was built with (as ``horovodrun -cb``)."""
    built = {flag: any(probe["built"].get(flag, False) for probe in extensions.values()) for flag in BUILD_FLAGS}
    return {
        "frameworks": {name: bool(probe["loads"]) for name, probe in extensions.items()},
        "controllers": {"mpi": built["mpi"], "gloo": built["gloo"]},
        "tensor_operations": {op: built[op] for op in ("nccl", "ddl", "ccl", "mpi", "gloo")},
        "gpu": {"cuda": built["cuda"], "rocm": built["rocm"]},
    }


def collect(require: list[str] | None = None) -> dict[str, Any]:
    """Inspect this installation; the returned dict is what ``hvdtrain doctor --json`` prints."""
    launchers = {"horovodrun": find_tool("horovodrun"), "mpirun": find_tool("mpirun")}
    versions = installed_versions(launchers["mpirun"])
    recorded = recorded_versions()
    build_key = recorded_build_key()
    # The build script keys builds by distribution versions and Python's major.minor.
    distributions = {**versions, "python": ".".join(platform.python_version_tuple()[:2])}
    pipeline_probe = start_code(_PIPELINE_PROBE.format(tag=PROBE_TAG)) \
        if versions["horovod"] and versions["torch"] and versions["mpi4py"] else None
    extensions = probe_extensions(versions) if versions["horovod"] else {}
    pipeline = finish_probe(pipeline_probe) if pipeline_probe else None
    for name, probe in extensions.items():  # the version Horovod compares with, where it could be read
        versions[name] = probe.get("framework_version") or versions[name]
    report: dict[str, Any] = {
        "versions": versions,
        "python_executable": sys.executable,
        "launchers": launchers,
        "horovod": {"installed": versions["horovod"] is not None, "built_against": recorded,
                    "build_key": build_key, "extensions": extensions, **build_summary(extensions)},
        "gpus": extensions.get("torch", {}).get("gpus") or {"count": 0, "names": []},
        "pipeline": pipeline,
    }
    problems = []
    if not versions["horovod"]:
        problems.append(missing_horovod_problem(sys.prefix))
    problems += version_problems(recorded, versions)
    problems += build_key_problems(build_key, distributions)
    problems += extension_problems(extensions, versions)
    is_root = hasattr(os, "geteuid") and os.geteuid() == 0
    problems += environment_problems(launchers["mpirun"], launchers["horovodrun"], is_root, os.environ)
    problems += gpu_problems(report["gpus"], report["horovod"].get("tensor_operations", {}))
    if versions["horovod"] and versions["torch"]:
        problems += pipeline_problems(pipeline)
    problems += requirement_problems(require or [], report)
    report["problems"] = [problem.as_dict() for problem in problems]
    report["ok"] = not any(problem.severity == "error" for problem in problems)
    return report


def _gpu_line(gpus: dict[str, Any]) -> str:
    if not gpus.get("count"):
        return "none visible to torch"
    names = sorted(set(gpus["names"]))
    libraries = ", ".join(f"{name} {gpus[key]}" for name, key in (("CUDA", "cuda"), ("cuDNN", "cudnn"),
                                                                  ("NCCL", "nccl")) if gpus.get(key))
    return f"{gpus['count']} x {' / '.join(names)} ({libraries})"


def _mark(flag: bool) -> str:
    return "[X]" if flag else "[ ]"


def format_report(report: dict[str, Any]) -> str:
    """The report as text for a terminal."""
    versions, horovod = report["versions"], report["horovod"]
    built = horovod.get("built_against") or {}
    against = ", ".join(f"{RECORDED_KEYS[key]} {value}" for key, value in built.items() if key in RECORDED_KEYS)
    rows = [
        ("Python", f"{versions['python']} ({report['python_executable']})"),
        ("hvdtrain", versions["hvdtrain"]),
        ("Horovod", f"{versions['horovod']}" + (f" (built against {against})" if against else "")),
        ("torch", versions["torch"]),
        ("TensorFlow", versions["tensorflow"]),
        ("MPI", f"{versions['openmpi']} ({report['launchers']['mpirun']})" if versions["openmpi"] else None),
        ("mpi4py", versions["mpi4py"]),
        ("horovodrun", report["launchers"]["horovodrun"]),
    ]
    lines = ["Versions"] + [f"  {name:<11} {value or 'not installed'}" for name, value in rows]
    lines.append(f"  {'GPUs':<11} {_gpu_line(report['gpus'])}")
    if report.get("pipeline") is not None:
        ready = not pipeline_problems(report["pipeline"])
        lines.append(f"  {'Pipelines':<11} {'ready: MPI with thread support' if ready else 'not available'}")
    if horovod["installed"]:
        titles = {"torch": "PyTorch", "tensorflow": "TensorFlow"}
        lines += [
            "Horovod build",
            "  Frameworks:        " + "  ".join(f"{_mark(ok)} {titles[name]}"
                                                for name, ok in horovod["frameworks"].items()),
            "  Controllers:       " + "  ".join(f"{_mark(ok)} {name.upper() if name == 'mpi' else 'Gloo'}"
                                                for name, ok in horovod["controllers"].items()),
            "  Tensor operations: " + "  ".join(f"{_mark(ok)} {name.upper() if name != 'gloo' else 'Gloo'}"
                                                for name, ok in horovod["tensor_operations"].items()),
        ]
    lines.append("Problems" if report["problems"] else "Problems: none")
    for problem in report["problems"]:
        lines += [f"  {problem['severity'].upper()}: {problem['message']}", f"    fix: {problem['fix']}"]
    lines.append("OK" if report["ok"] else "NOT OK: fix the errors above")
    return "\n".join(lines)
