"""The launch plan: the exact command line, the variables set for it, and what ``hvdtrain run`` does
around it. Pure: nothing is started here."""
from __future__ import annotations

import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from hvdtrain.core import job_reports
from hvdtrain.launcher.allocation import Allocation
from hvdtrain.launcher.config import RunOptions
from hvdtrain.launcher.horovodrun import BIND_ENV as RENDEZVOUS_BIND_ENV
from hvdtrain.launcher.hosts import Host, format_hosts
from hvdtrain.launcher.machine import Machine
from hvdtrain.launcher.network import JobNetwork

# Environment variables exported to every worker by mpirun (horovodrun exports the whole environment).
PASSTHROUGH_NAMES = ("PATH", "LD_LIBRARY_PATH", "PYTHONPATH", "VIRTUAL_ENV", "OMP_NUM_THREADS", "MKL_NUM_THREADS",
                     "PYTHONUNBUFFERED", "PYTHONHASHSEED", "CUDA_VISIBLE_DEVICES", "TF_CPP_MIN_LOG_LEVEL",
                     "TF_ENABLE_ONEDNN_OPTS", "KERAS_BACKEND")
PASSTHROUGH_PREFIXES = ("HVDTRAIN_", "HOROVOD_", "NCCL_")


@dataclass(frozen=True)
class GeneratedScript:
    """A file ``hvdtrain run`` writes (executable) before the launch and removes after it."""

    path: str
    text: str


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
    elastic: bool = False
    hosts_may_change: bool = False  # elastic, with hosts from a discovery script or a hostfile

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
        if self.controller != "gloo" or len(self.interfaces) > 1 or network.everywhere:
            return self
        argv = [python, "-m", "hvdtrain.launcher.horovodrun", *self.argv[1:]]
        if network.interface and not self.interfaces:
            argv[3:3] = ["--network-interface", network.interface]
        return replace(self, argv=argv, env={**self.env, RENDEZVOUS_BIND_ENV: network.address})

    def shell(self) -> str:
        """The plan as one copy-pasteable shell line."""
        assignments = [f"{name}={shlex.quote(value)}" for name, value in sorted(self.env.items())]
        return " ".join([*assignments, shlex.join(self.argv)])


def horovodrun_argv(executable: str, options: RunOptions, np: int | None, hosts: list[Host] | None,
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


def mpirun_argv(executable: str, options: RunOptions, np: int | None, hosts: list[Host] | None,
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
