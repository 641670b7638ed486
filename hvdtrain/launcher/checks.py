"""Known installation problems and their fixes: pure functions over what ``doctor`` collected."""
from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

REBUILD = "re-run `make setup` (or scripts/build_horovod.sh)"
# Horovod's metadata.json key -> the name hvdtrain reports the framework under.
RECORDED_KEYS = {"pytorch": "torch", "tensorflow": "tensorflow"}
FRAMEWORK_TITLES = {"torch": "PyTorch", "tensorflow": "TensorFlow"}
REQUIREMENTS = ("torch", "tensorflow", "mpi", "gloo", "nccl")


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the installation; ``error`` makes ``hvdtrain doctor`` exit non-zero."""

    severity: str  # "error" or "warning"
    message: str
    fix: str

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


def missing_horovod_problem(prefix: str) -> Problem:
    """Horovod is not importable from this interpreter's environment."""
    return Problem("error", f"Horovod is not installed in {prefix}", f"{REBUILD} to build and install it")


def version_problems(recorded: Mapping[str, str] | None, installed: Mapping[str, str | None]) -> list[Problem]:
    """Horovod compiled against a framework version other than the installed one.

    Args:
        recorded: Horovod's ``metadata.json`` (``{"pytorch": "2.13.0+cpu", "tensorflow": "2.21.0"}``).
        installed: installed versions keyed ``torch`` and ``tensorflow`` (None: not installed).
    """
    problems = []
    for key, name in RECORDED_KEYS.items():
        built_with, have = (recorded or {}).get(key), installed.get(name)
        if have is None or built_with in (None, "none") or built_with == have:
            continue
        problems.append(Problem(
            "error",
            f"Horovod was built against {name} {built_with} but {name} {have} is installed; its "
            f"{FRAMEWORK_TITLES[name]} extension may fail to load or crash at run time",
            f"{REBUILD} to rebuild Horovod against {name} {have}"))
    return problems


_BUILD_KEY = re.compile(r"^horovod-(?P<horovod>.+?)_torch-(?P<torch>.+?)_tf-(?P<tensorflow>.+?)"
                        r"_py-(?P<python>\d+\.\d+)_gpu-(?P<gpu>.+)$")


def parse_build_key(key: str) -> dict[str, str] | None:
    """Split the key ``scripts/build_horovod.sh`` records (``horovod-0.28.1_torch-2.13.0+cpu_tf-...``)."""
    match = _BUILD_KEY.match(key.strip())
    return match.groupdict() if match else None


def build_key_problems(key: str | None, installed: Mapping[str, str | None]) -> list[Problem]:
    """The environment changed since ``scripts/build_horovod.sh`` built the installed Horovod.

    Args:
        key: the recorded build key (``<venv>/hvdtrain-horovod-build.txt``), None when absent.
        installed: distribution versions keyed ``horovod``, ``torch``, ``tensorflow`` and ``python``
            (major.minor), as the build script reads them.
    """
    if key is None:
        return []
    built = parse_build_key(key)
    if built is None:
        return [Problem("warning", f"the recorded Horovod build key {key!r} is not in the expected format",
                        f"{REBUILD} to record it again")]
    problems = []
    for name in ("horovod", "torch", "tensorflow", "python"):
        have = installed.get(name)
        if have is not None and built[name] != have:
            problems.append(Problem(
                "error", f"Horovod here was built by scripts/build_horovod.sh for {name} {built[name]}, "
                         f"but {name} {have} is installed now", f"{REBUILD} to rebuild Horovod against {name} {have}"))
    return problems


def extension_problems(extensions: Mapping[str, Mapping[str, Any]], installed: Mapping[str, str | None]
                       ) -> list[Problem]:
    """A framework is installed but its Horovod extension (``horovod.torch`` / ``horovod.tensorflow``) fails."""
    problems = []
    for name, probe in extensions.items():
        if probe.get("loads"):
            continue
        error = probe.get("error") or "unknown error"
        if "has not been built" in error:
            why = f"Horovod was built without {FRAMEWORK_TITLES[name]} support"
        else:
            why = f"horovod.{name} fails to load: {error}"
        problems.append(Problem("error", why, f"{REBUILD} to rebuild Horovod against {name} {installed.get(name)}"))
    return problems


def environment_problems(mpirun: str | None, horovodrun: str | None, is_root: bool,
                         environ: Mapping[str, str]) -> list[Problem]:
    """Launch-time pitfalls: a missing launcher, Open MPI refusing root."""
    problems = []
    if not mpirun:
        problems.append(Problem(
            "warning", "`mpirun` is not on PATH: only the Gloo controller can be used",
            "install Open MPI (`make setup`, or apt-get install openmpi-bin libopenmpi-dev) and rebuild Horovod"))
    if not horovodrun:
        problems.append(Problem(
            "warning", "`horovodrun` is missing next to this Python and on PATH",
            f"{REBUILD}; it installs Horovod and its launcher into this environment"))
    allowed = environ.get("OMPI_ALLOW_RUN_AS_ROOT") == "1" and environ.get("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM") == "1"
    if mpirun and is_root and not allowed:
        problems.append(Problem(
            "warning", "running as root: plain `mpirun` refuses to start unless told root is fine",
            "`hvdtrain run` adds --allow-run-as-root for you; by hand, add --allow-run-as-root or "
            "export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1"))
    return problems


def gpu_problems(gpus: Mapping[str, Any], tensor_operations: Mapping[str, bool]) -> list[Problem]:
    """GPUs that Horovod cannot use at full speed: without NCCL, every allreduce goes through host memory.

    Args:
        gpus: ``{"count": n, ...}`` as the doctor's torch probe reports it.
        tensor_operations: Horovod's tensor operations (``{"nccl": bool, ...}``).
    """
    count = int(gpus.get("count") or 0)
    if count == 0 or tensor_operations.get("nccl"):
        return []
    return [Problem("warning", f"this machine has {count} GPU{'s' * (count != 1)} but Horovod was built without "
                               "NCCL: gradients would be copied to the CPU and reduced over MPI or Gloo",
                    f"{REBUILD} on this machine: it builds Horovod with HOROVOD_GPU_OPERATIONS=NCCL when it "
                    "finds a GPU")]


def pipeline_problems(probe: Mapping[str, Any] | None) -> list[Problem]:
    """What stops pipeline parallelism (``hvdtrain.torch.init(pipeline=P)``): its stages send with mpi4py
    beside Horovod's own MPI thread, so both need one MPI with MPI_THREAD_MULTIPLE.

    Args:
        probe: the doctor's pipeline probe, or None when mpi4py is not installed.
    """
    fix = ("install Open MPI 4 or later (`make setup`), `pip install --no-binary mpi4py mpi4py` against it, and "
           f"{REBUILD}")
    if probe is None:
        return [Problem("warning", "mpi4py is not installed: pipeline parallelism cannot send activations", fix)]
    if not probe.get("loads"):
        return [Problem("warning", f"MPI could not start for pipeline parallelism: {probe.get('error')}", fix)]
    if not probe.get("horovod_mpi"):
        return [Problem("warning", "Horovod was built without MPI: pipeline parallelism needs it", fix)]
    if not (probe.get("mpi4py_threads") and probe.get("horovod_threads")):
        return [Problem("warning", "this MPI gives no MPI_THREAD_MULTIPLE: a pipeline's sends would race with "
                                   "Horovod's MPI thread", fix)]
    return []


def requirement_problems(require: list[str], report: Mapping[str, Any]) -> list[Problem]:
    """Each name of ``--require`` that this installation does not provide.

    Args:
        require: names out of ``REQUIREMENTS``.
        report: the report built by ``doctor.collect`` (``horovod`` and ``launchers`` sections).
    """
    horovod = report["horovod"]
    have = {
        "torch": horovod["frameworks"].get("torch", False),
        "tensorflow": horovod["frameworks"].get("tensorflow", False),
        "mpi": horovod["controllers"].get("mpi", False) and bool(report["launchers"].get("mpirun")),
        "gloo": horovod["controllers"].get("gloo", False),
        "nccl": horovod["tensor_operations"].get("nccl", False),
    }
    fixes = {
        "torch": f"install torch, then {REBUILD}",
        "tensorflow": f"install tensorflow, then {REBUILD}",
        "mpi": f"install Open MPI (apt-get install openmpi-bin libopenmpi-dev), then {REBUILD}",
        "gloo": f"{REBUILD} (the build enables Gloo with HOROVOD_WITH_GLOO=1)",
        "nccl": f"on a CUDA machine, {REBUILD} with HOROVOD_GPU_OPERATIONS=NCCL",
    }
    return [Problem("error", f"required `{name}` is not available to Horovod here", fixes[name])
            for name in require if not have[name]]


def parse_requirements(text: str | None) -> list[str]:
    """Split ``--require torch,mpi``; raises ValueError naming the valid names on an unknown one."""
    names = [name.strip().lower() for name in (text or "").split(",") if name.strip()]
    aliases = {"pytorch": "torch", "tf": "tensorflow"}
    names = [aliases.get(name, name) for name in names]
    unknown = [name for name in names if name not in REQUIREMENTS]
    if unknown:
        raise ValueError(f"--require: unknown name(s) {', '.join(unknown)}; choose from {', '.join(REQUIREMENTS)}")
    return names
