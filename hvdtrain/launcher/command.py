"""Turn ``RunOptions`` into the exact launcher command: pure functions, nothing is started here.

The machine (interpreter, launchers found, cores, root or not, environment) is an
explicit ``Machine`` value, so the command for any machine can be built and tested.
"""
from __future__ import annotations

import os
import shlex
import shutil
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from hvdtrain.core import job_reports
from hvdtrain.core.distributed import LOCAL_SLOT_HOSTS
from hvdtrain.launcher.allocation import Allocation, slurm_allocation
from hvdtrain.launcher.config import RunOptions
from hvdtrain.launcher.elastic import (
    DEFAULT_COOLDOWN_RANGE,
    LOOPBACK_INTERFACE,
    GeneratedScript,
    check_discovery_script,
    check_elastic_launch,
    discovery_path,
    elastic_sizes,
    fixed_discovery,
    hostfile_discovery,
    local_slot_hosts,
    reject_elastic_options,
    shared_local_host_warnings,
)
from hvdtrain.launcher.errors import LaunchError
from hvdtrain.launcher.horovodrun import BIND_ENV as RENDEZVOUS_BIND_ENV
from hvdtrain.launcher.hosts import Host, HostError, format_hosts, parse_hostfile, parse_hosts, processes_per_host
from hvdtrain.launcher.hosts import total_slots as count_slots
from hvdtrain.launcher.network import JobNetwork

# Environment variables exported to every worker by mpirun (horovodrun exports the whole environment).
PASSTHROUGH_NAMES = ("PATH", "LD_LIBRARY_PATH", "PYTHONPATH", "VIRTUAL_ENV", "OMP_NUM_THREADS", "MKL_NUM_THREADS",
                     "PYTHONUNBUFFERED", "PYTHONHASHSEED", "CUDA_VISIBLE_DEVICES", "TF_CPP_MIN_LOG_LEVEL",
                     "TF_ENABLE_ONEDNN_OPTS", "KERAS_BACKEND")
PASSTHROUGH_PREFIXES = ("HVDTRAIN_", "HOROVOD_", "NCCL_")
# A scheduler that hands mpirun its own host list; then hvdtrain adds no -H. (A Slurm allocation
# that was read, ``Machine.allocation``, gives hvdtrain the hosts and -np itself.)
ALLOCATION_VARIABLES = ("SLURM_JOB_ID", "PBS_JOBID", "LSB_JOBID", "OMPI_MCA_orte_default_hostfile")


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


@dataclass(frozen=True)
class LaunchPlan:
    """The command to run and the variables set on top of the current environment."""

    argv: list[str]
    env: dict[str, str]
    launcher: str
    controller: str
    np: int | None
    hosts: list[Host] | None
    yield_when_idle: bool
    allocation: Allocation | None = None
    warnings: tuple[str, ...] = ()
    discovery_script: GeneratedScript | None = None
    interfaces: tuple[str, ...] = ()  # the job's network interfaces, as given (or lo for local elastic jobs)

    @property
    def elastic(self) -> bool:
        return self.discovery_script is not None or "--host-discovery-script" in self.argv

    def for_execution(self, network: JobNetwork, python: str) -> LaunchPlan:
        """The plan to execute once the job's address is known.

        mpirun exports the workers' report variables (``hvdtrain.core.job_reports``; horovodrun
        exports the whole environment). A Gloo job's horovodrun runs through
        ``hvdtrain.launcher.horovodrun``, which binds the rendezvous server to the job's address, and a
        multi-host one is told the interface of that address (its workers connect to it).
        """
        if self.launcher == "mpirun":
            exports = [flag for name in (job_reports.ADDRESS_ENV, job_reports.TOKEN_ENV) for flag in ("-x", name)]
            return replace(self, argv=[self.argv[0], *exports, *self.argv[1:]])
        if self.controller != "gloo" or len(self.interfaces) > 1:
            return self
        argv = [python, "-m", "hvdtrain.launcher.horovodrun", *self.argv[1:]]
        if network.interface and not self.interfaces:
            argv[3:3] = ["--network-interface", network.interface]
        return replace(self, argv=argv, env={**self.env, RENDEZVOUS_BIND_ENV: network.address})

    def shell(self) -> str:
        """The plan as one copy-pasteable shell line."""
        assignments = [f"{name}={shlex.quote(value)}" for name, value in sorted(self.env.items())]
        return " ".join([*assignments, shlex.join(self.argv)])


def check_script(script: str, cwd: str | os.PathLike | None = None) -> None:
    """Fail unless ``script`` is an existing file (relative paths from ``cwd``)."""
    path = Path(cwd or os.getcwd()) / script
    if path.is_dir():
        raise LaunchError(f"training script {script!r} is a directory; give the Python file to run, "
                          "e.g. `hvdtrain run -np 2 train.py`")
    if not path.is_file():
        raise LaunchError(f"training script {script!r} not found (looked in {Path(cwd or os.getcwd())}); "
                          "check the path, it is relative to the current directory")


def resolve_hosts(options: RunOptions) -> list[Host] | None:
    """The hosts of ``--hosts`` or ``--hostfile``, or None for "this machine only"."""
    if options.hosts and options.hostfile:
        raise LaunchError("give either -H/--hosts or --hostfile, not both")
    try:
        if options.hosts:
            return parse_hosts(options.hosts)
        if options.hostfile:
            return parse_hostfile(options.hostfile)
    except HostError as err:
        raise LaunchError(str(err)) from err
    return None


def resolve_np(options: RunOptions, hosts: list[Host] | None, scheduler: str | None, gpus: int = 0) -> int | None:
    """The number of workers; checks it fits the slots of the hosts.

    Args:
        scheduler: the variable naming a scheduler's allocation that mpirun reads itself
            (``PBS_JOBID``...); then ``np`` may stay unset.
        gpus: this machine's GPUs: on it alone, ``np`` defaults to one worker per GPU.
    """
    if hosts is not None:
        np = options.np if options.np is not None else count_slots(hosts)
        check_fits_hosts(np, hosts)
        return np
    if options.np is None and scheduler is None and gpus:
        return gpus
    if options.np is None and scheduler is None:
        raise LaunchError("the number of workers is not set: give -np N (or `np: N` in the config file), "
                          "or hosts with -H/--hostfile to use all their slots")
    return options.np


def check_fits_hosts(np: int, hosts: list[Host]) -> None:
    """Fail when ``np`` workers are more than the slots of ``hosts``."""
    slots = count_slots(hosts)
    if np > slots:
        raise LaunchError(f"-np {np} is more than the {slots} slots of the hosts ({format_hosts(hosts)}); "
                          f"lower -np to at most {slots} or add slots (`host:N` / `host slots=N`)")


def allocation_np(options: RunOptions, allocation: Allocation) -> int:
    """The number of workers inside a Slurm allocation: all its tasks unless ``np`` asks for fewer.

    Raises:
        LaunchError: ``np`` is more than the allocation's tasks; names both numbers and the fix.
    """
    if options.np is None:
        return allocation.ntasks
    if options.np > allocation.ntasks:
        raise LaunchError(
            f"-np {options.np} is more than the {allocation.ntasks} task(s) of {allocation.describe()}; "
            f"drop -np (and `np:` from the config file) to use all {allocation.ntasks}, lower it, or submit the "
            f"job with {options.np} tasks (e.g. `sbatch --ntasks={options.np}`, or more --nodes/--ntasks-per-node)")
    return options.np


def resolve_controller(options: RunOptions, machine: Machine) -> str:
    """``mpi`` or ``gloo``: as asked, else MPI when mpirun exists (faster here), else Gloo."""
    if options.controller:
        return options.controller
    if options.launcher == "mpirun" or machine.mpirun:
        return "mpi"
    return "gloo"


def resolve_launcher(options: RunOptions, controller: str, machine: Machine) -> tuple[str, str]:
    """The launcher name and its executable; checks the combination can work."""
    launcher = options.launcher
    if launcher == "auto":
        launcher = "mpirun" if controller == "mpi" else "horovodrun"
    if launcher == "mpirun" and controller == "gloo":
        raise LaunchError("the Gloo controller needs horovodrun (it runs Gloo's rendezvous); "
                          "use --gloo with --launcher horovodrun, or --mpi with --launcher mpirun")
    if controller == "mpi" and not machine.mpirun:
        raise LaunchError("the MPI controller needs `mpirun`, which is not on PATH; install Open MPI "
                          "(`make setup` or apt-get install openmpi-bin) or use --gloo")
    executable = machine.mpirun if launcher == "mpirun" else machine.horovodrun
    if not executable:
        raise LaunchError(f"`horovodrun` was found neither next to {machine.python} nor on PATH; "
                          "install Horovod into this environment (`make setup`)")
    return launcher, executable


def split_env(entries: list[str], environ: Mapping[str, str]) -> dict[str, str | None]:
    """``NAME=VALUE`` -> value, ``NAME`` -> None (pass the current value); checks ``NAME`` is set."""
    result: dict[str, str | None] = {}
    for entry in entries:
        name, has_value, value = entry.partition("=")
        if not has_value and name not in environ:
            raise LaunchError(f"-x {name}: {name} is not set in this environment; "
                              f"set it first or give a value with -x {name}=VALUE")
        result[name] = value if has_value else None
    return result


def _number(value: float) -> str:
    return f"{value:g}"


# option key, horovodrun flag, Horovod environment variable, its value (None: a flag without value, "1").
HOROVOD_OPTIONS = (
    ("fusion_threshold_mb", "--fusion-threshold-mb", "HOROVOD_FUSION_THRESHOLD", lambda mb: str(mb * 1024 * 1024)),
    ("cycle_time_ms", "--cycle-time-ms", "HOROVOD_CYCLE_TIME", _number),
    ("cache_capacity", "--cache-capacity", "HOROVOD_CACHE_CAPACITY", str),
    ("timeline_filename", "--timeline-filename", "HOROVOD_TIMELINE", str),
    ("timeline_mark_cycles", "--timeline-mark-cycles", "HOROVOD_TIMELINE_MARK_CYCLES", None),
    ("autotune", "--autotune", "HOROVOD_AUTOTUNE", None),
    ("autotune_log_file", "--autotune-log-file", "HOROVOD_AUTOTUNE_LOG", str),
    ("no_stall_check", "--no-stall-check", "HOROVOD_STALL_CHECK_DISABLE", None),
    ("stall_check_warning_time_seconds", "--stall-check-warning-time-seconds", "HOROVOD_STALL_CHECK_TIME_SECONDS",
     str),
    ("stall_check_shutdown_time_seconds", "--stall-check-shutdown-time-seconds",
     "HOROVOD_STALL_SHUTDOWN_TIME_SECONDS", str),
    ("log_level", "--log-level", "HOROVOD_LOG_LEVEL", str),
    ("gloo_timeout_seconds", "--gloo-timeout-seconds", "HOROVOD_GLOO_TIMEOUT_SECONDS", str),
)


# Horovod's stall inspector shuts the job down after this many seconds of a stalled collective, unless told
# otherwise. It is a backstop past the per-rank watchdog (HVDTRAIN_COLLECTIVE_TIMEOUT, 600 s): it runs on
# rank 0 only and misses a stopped process (docs/reliability.md), but catches ranks that submit different
# collectives while all of them still run.
DEFAULT_STALL_SHUTDOWN_S = 900


def horovod_settings(options: RunOptions) -> list[tuple[list[str], str, str]]:
    """Each Horovod tuning option that is set, as (horovodrun flags, environment variable, value)."""
    _check_horovod_combinations(options)
    warning = options.stall_check_warning_time_seconds
    if not options.no_stall_check and options.stall_check_shutdown_time_seconds is None \
            and (warning if warning is not None else 60) < DEFAULT_STALL_SHUTDOWN_S:
        options = replace(options, stall_check_shutdown_time_seconds=DEFAULT_STALL_SHUTDOWN_S)
    settings = []
    for key, flag, variable, to_value in HOROVOD_OPTIONS:
        value = getattr(options, key)
        if value is None or value is False:
            continue
        if to_value is None:
            settings.append(([flag], variable, "1"))
        else:
            text = _number(value) if isinstance(value, float) else str(value)
            settings.append(([flag, text], variable, to_value(value)))
    return settings


def _check_horovod_combinations(options: RunOptions) -> None:
    stall_times = (options.stall_check_warning_time_seconds, options.stall_check_shutdown_time_seconds)
    if options.no_stall_check and any(value is not None for value in stall_times):
        raise LaunchError("--no-stall-check disables the stall check, so the stall check times do nothing; "
                          "drop one of them")
    warning, shutdown = options.stall_check_warning_time_seconds, options.stall_check_shutdown_time_seconds
    if shutdown and shutdown <= (warning if warning is not None else 60):
        raise LaunchError(f"--stall-check-shutdown-time-seconds {shutdown} must be greater than the warning time "
                          f"({warning if warning is not None else 60} s), or Horovod never shuts down")
    if options.timeline_mark_cycles and not options.timeline_filename:
        raise LaunchError("--timeline-mark-cycles needs --timeline-filename")
    if options.autotune_log_file and not options.autotune:
        raise LaunchError("--autotune-log-file needs --autotune")


def needs_yield(np: int | None, hosts: list[Host] | None, cpu_count: int, has_gpu: bool = False) -> bool:
    """True unless GPUs do the compute and a host runs fewer workers than it has cores.

    A CPU worker's thread pool fills its share of the cores, so a rank that
    busy-polls in a collective steals them from the others: Open MPI must
    yield (measured here: busy polling made the MLP 16% and the CNN 30% slower).
    Remote hosts are assumed to have as many cores as this one.
    """
    if np is None:
        return not has_gpu
    per_host = processes_per_host(hosts, np) if hosts else [np]
    return max(per_host) > 1 and (not has_gpu or max(per_host) >= cpu_count)


def build_plan(options: RunOptions, script: str, script_args: list[str], machine: Machine,
               cwd: str | os.PathLike | None = None) -> LaunchPlan:
    """The exact command that runs ``script`` on the workers ``options`` describe.

    Args:
        options: merged options (``config.merge``).
        script: the training script; it runs with ``machine.python``.
        script_args: arguments passed to the script unchanged.
        machine: the launching machine (``detect_machine()``).
        cwd: directory the script path is relative to (default: the current directory).

    Raises:
        LaunchError: on any input that cannot work; the message names the fix.
    """
    check_script(script, cwd)
    hosts = resolve_hosts(options)
    if options.elastic:
        return _elastic_plan(options, [machine.python, script, *script_args], hosts, machine, cwd)
    reject_elastic_options(vars(options))
    allocation = machine.allocation if hosts is None else None
    if allocation is not None:
        scheduler, hosts, np = None, allocation.hosts, allocation_np(options, allocation)
    else:
        scheduler = next((name for name in ALLOCATION_VARIABLES if name in machine.environ), None)
        np = resolve_np(options, hosts, scheduler, machine.gpus)
    controller = resolve_controller(options, machine)
    launcher, executable = resolve_launcher(options, controller, machine)
    user_env = split_env(options.env, machine.environ)
    settings = horovod_settings(options)
    yield_idle = controller == "mpi" and needs_yield(np, hosts, machine.cpu_count, machine.has_gpu)
    program = [machine.python, script, *script_args]
    warnings = gpu_warnings(np, hosts, machine.gpus)
    if launcher == "mpirun":
        argv = _mpirun_argv(executable, options, np, hosts, scheduler, machine, yield_idle, user_env, settings)
        return LaunchPlan([*argv, *program], {}, launcher, controller, np, hosts, yield_idle, allocation, warnings,
                          interfaces=tuple(options.network_interface))
    if options.mpi_args and controller == "gloo":
        raise LaunchError("mpi_args only apply to the MPI controller; drop them or use --mpi")
    argv = _horovodrun_argv(executable, options, np, hosts, controller, yield_idle, settings)
    env = {name: value for name, value in user_env.items() if value is not None}
    return LaunchPlan([*argv, *program], env, launcher, controller, np, hosts, yield_idle, allocation, warnings,
                      interfaces=tuple(options.network_interface))


def gpu_warnings(np: int | None, hosts: list[Host] | None, gpus: int) -> tuple[str, ...]:
    """A warning when a launch on this machine alone starts more workers than it has GPUs."""
    if hosts is not None or not gpus or np is None or np <= gpus:
        return ()
    return (f"-np {np} is more than the {gpus} GPU{'s' * (gpus != 1)} of this machine: PyTorch workers take one "
            f"GPU each and stop with an error; use -np {gpus} (or leave -np out: it defaults to the GPU count)",)


@dataclass(frozen=True)
class ElasticDiscovery:
    """Where the hosts of an elastic job come from, and how many workers it runs."""

    sizes: tuple[int, int, int]  # min_np, np, max_np
    script: str  # the discovery script horovodrun runs
    generated: GeneratedScript | None = None  # written by hvdtrain run for the job
    local_slot_hosts: tuple[str, ...] = ()  # this machine's slot names, when it is the only host


def _elastic_plan(options: RunOptions, program: list[str], hosts: list[Host] | None, machine: Machine,
                  cwd: str | os.PathLike | None) -> LaunchPlan:
    """horovodrun in elastic mode: Gloo, and a host discovery script (the user's or one written for the job)."""
    check_elastic_launch(options.controller, options.launcher)
    _launcher, executable = resolve_launcher(options, "gloo", machine)
    if options.mpi_args:
        raise LaunchError("mpi_args only apply to the MPI controller, and elastic training runs on Gloo; drop them")
    if options.slots_per_host and not options.host_discovery_script:
        raise LaunchError("--slots-per-host only applies to --host-discovery-script (the hosts hvdtrain lists carry "
                          "their slots); drop it")
    allocation = None
    if options.host_discovery_script:
        discovery = _user_discovery(options, hosts, cwd)
    else:
        if hosts is None and machine.allocation is not None:
            allocation, hosts = machine.allocation, machine.allocation.hosts
        discovery = _local_discovery(options, machine) if hosts is None else _hosts_discovery(options, hosts, machine)
    env = {name: value for name, value in split_env(options.env, machine.environ).items() if value is not None}
    interfaces, warnings = options.network_interface, shared_local_host_warnings(hosts or [])
    if discovery.local_slot_hosts:
        env[LOCAL_SLOT_HOSTS] = ",".join(discovery.local_slot_hosts)
        interfaces = interfaces or [LOOPBACK_INTERFACE]
        warnings = gpu_warnings(discovery.sizes[2], None, machine.gpus)
    np = discovery.sizes[1]
    argv = _horovodrun_argv(executable, replace(options, network_interface=interfaces), np, None, "gloo", False,
                            horovod_settings(options), _elastic_flags(options, discovery))
    # Each worker runs under its agent, which ends it when it stops beating (hvdtrain.launcher.agent).
    supervised = [machine.python, "-m", "hvdtrain.launcher.agent", *program]
    return LaunchPlan([*argv, *supervised], env, "horovodrun", "gloo", np, hosts, False, allocation, warnings,
                      discovery.generated, tuple(interfaces))


def _user_discovery(options: RunOptions, hosts: list[Host] | None, cwd: str | os.PathLike | None
                    ) -> ElasticDiscovery:
    if hosts is not None:
        raise LaunchError("give either --host-discovery-script or -H/--hosts/--hostfile, not both: the script "
                          "lists the hosts of the elastic job")
    script = check_discovery_script(options.host_discovery_script, cwd)
    return ElasticDiscovery(elastic_sizes(options.min_np, options.np, options.max_np, None), script)


def _hosts_discovery(options: RunOptions, hosts: list[Host], machine: Machine) -> ElasticDiscovery:
    """A hostfile is read again on every call (editing it adds or removes hosts); -H hosts are a fixed list."""
    sizes = elastic_sizes(options.min_np, options.np, options.max_np, count_slots(hosts))
    check_fits_hosts(sizes[1], hosts)
    if options.hostfile:
        text = hostfile_discovery(os.path.abspath(options.hostfile), machine.python)
    else:
        text = fixed_discovery(hosts, f"the hosts of {'-H' if options.hosts else 'the Slurm allocation'}, a fixed list")
    path = discovery_path()
    return ElasticDiscovery(sizes, path, GeneratedScript(path, text))


def _local_discovery(options: RunOptions, machine: Machine) -> ElasticDiscovery:
    """This machine alone, each slot under a name of its own (``local_slot_hosts``): a failure costs one slot."""
    scheduler = next((name for name in ALLOCATION_VARIABLES if name in machine.environ), None)
    if scheduler is not None:
        raise LaunchError(f"--elastic cannot read the hosts of the scheduler's allocation ({scheduler} is set; "
                          "horovodrun does not read them); list them with --hostfile FILE or -H host:N,..., or give "
                          "a --host-discovery-script")
    slots = options.max_np or options.np or machine.gpus or machine.cpu_count
    sizes = elastic_sizes(options.min_np, options.np, options.max_np, slots)
    names = local_slot_hosts(sizes[2])
    text = fixed_discovery([Host(name, 1) for name in names],
                           "this machine, each slot as a host of its own (docs/launching.md, Elastic training)")
    path = discovery_path()
    return ElasticDiscovery(sizes, path, GeneratedScript(path, text), tuple(names))


def _elastic_flags(options: RunOptions, discovery: ElasticDiscovery) -> list[str]:
    min_np, _np, max_np = discovery.sizes
    flags = ["--min-np", str(min_np), "--max-np", str(max_np), "--host-discovery-script", shlex.quote(discovery.script)]
    if options.host_discovery_script:
        flags += ["--slots-per-host", str(options.slots_per_host or 1)]
    low, high = options.blacklist_cooldown_range or DEFAULT_COOLDOWN_RANGE
    flags += ["--blacklist-cooldown-range", str(low), str(high)]
    if options.elastic_timeout is not None:
        flags += ["--elastic-timeout", str(options.elastic_timeout)]
    if options.reset_limit is not None:
        flags += ["--reset-limit", str(options.reset_limit)]
    return flags


def _horovodrun_argv(executable: str, options: RunOptions, np: int | None, hosts: list[Host] | None,
                     controller: str, yield_idle: bool, settings: list, elastic_flags: Sequence[str] = ()) -> list[str]:
    argv = [executable, "-np", str(np), *elastic_flags]
    if hosts:
        argv += ["-H", format_hosts(hosts)]
    argv.append(f"--{controller}")
    for flags, _name, _value in settings:
        argv += flags
    for interface in options.network_interface:
        argv += ["--network-interface", interface]
    if options.ssh_port:
        argv += ["-p", str(options.ssh_port)]
    if options.ssh_identity_file:
        argv += ["-i", options.ssh_identity_file]
    mpi_args = (["--mca", "mpi_yield_when_idle", "1"] if yield_idle else []) + options.mpi_args
    if mpi_args:
        argv.append(f"--mpi-args={shlex.join(mpi_args)}")
    return argv


def _mpirun_argv(executable: str, options: RunOptions, np: int | None, hosts: list[Host] | None,
                 scheduler: str | None, machine: Machine, yield_idle: bool, user_env: dict[str, str | None],
                 settings: list) -> list[str]:
    argv = [executable]
    if np is not None:
        argv += ["-np", str(np)]
    if hosts:
        argv += ["-H", format_hosts(hosts)]
    elif scheduler is None:
        argv += ["-H", f"localhost:{np}"]
    argv += ["--bind-to", "none", "--map-by", "slot"]
    if machine.is_root:
        argv.append("--allow-run-as-root")
    if yield_idle:
        argv += ["--mca", "mpi_yield_when_idle", "1"]
    if options.network_interface:
        interfaces = ",".join(options.network_interface)
        argv += ["--mca", "btl_tcp_if_include", interfaces, "--mca", "oob_tcp_if_include", interfaces,
                 "-x", f"NCCL_SOCKET_IFNAME={interfaces}"]
    ssh = (["-p", str(options.ssh_port)] if options.ssh_port else []) + (
        ["-i", options.ssh_identity_file] if options.ssh_identity_file else [])
    if ssh:
        argv += ["--mca", "plm_rsh_args", shlex.join(ssh)]
    argv += options.mpi_args
    for name in exported_names(machine.environ, {*user_env, *(name for _f, name, _v in settings)}):
        argv += ["-x", name]
    for name, value in user_env.items():
        argv += ["-x", name if value is None else f"{name}={value}"]
    for _flags, name, value in settings:
        argv += ["-x", f"{name}={value}"]
    return argv


def exported_names(environ: Mapping[str, str], exclude: set[str]) -> list[str]:
    """Names of the set variables every worker needs (sorted), minus ``exclude`` (given with a value)."""
    return sorted(name for name in environ if name not in exclude and (
        name in PASSTHROUGH_NAMES or name.startswith(PASSTHROUGH_PREFIXES)))
