"""From the options to the job's shape: the script, the hosts, the number of workers, the controller and
the launcher, each checked, with an error that names the fix (``LaunchError``)."""
from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from hvdtrain.launcher.allocation import Allocation
from hvdtrain.launcher.config import RunOptions
from hvdtrain.launcher.errors import LaunchError
from hvdtrain.launcher.hosts import Host, HostError, format_hosts, parse_hostfile, parse_hosts, processes_per_host
from hvdtrain.launcher.hosts import total_slots as count_slots
from hvdtrain.launcher.machine import Machine

# A scheduler that hands mpirun its own host list; then hvdtrain adds no -H. (A Slurm allocation
# that was read, ``Machine.allocation``, gives hvdtrain the hosts and -np itself.)
ALLOCATION_VARIABLES = ("SLURM_JOB_ID", "PBS_JOBID", "LSB_JOBID", "OMPI_MCA_orte_default_hostfile")


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


def gpu_warnings(np: int | None, hosts: list[Host] | None, gpus: int) -> tuple[str, ...]:
    """A warning when a launch on this machine alone starts more workers than it has GPUs."""
    if hosts is not None or not gpus or np is None or np <= gpus:
        return ()
    return (f"-np {np} is more than the {gpus} GPU{'s' * (gpus != 1)} of this machine: PyTorch workers take one "
            f"GPU each and stop with an error; use -np {gpus} (or leave -np out: it defaults to the GPU count)",)
