"""Turn ``RunOptions`` into the exact launcher command (``build_plan``): pure, nothing is started here.

The machine is an explicit ``Machine`` value (``hvdtrain.launcher.machine``), so the command for any
machine can be built and tested. The job's shape is resolved in ``resolve``, an elastic job is
planned in ``elastic``, Horovod's tuning options come from ``tuning``, and ``plan`` renders the
command line.
"""
from __future__ import annotations

import os

from hvdtrain.launcher.config import RunOptions
from hvdtrain.launcher.elastic import elastic_plan, reject_elastic_options
from hvdtrain.launcher.errors import LaunchError
from hvdtrain.launcher.machine import Machine
from hvdtrain.launcher.plan import LaunchPlan, horovodrun_argv, mpirun_argv
from hvdtrain.launcher.resolve import (
    ALLOCATION_VARIABLES,
    allocation_np,
    check_script,
    gpu_warnings,
    needs_yield,
    resolve_controller,
    resolve_hosts,
    resolve_launcher,
    resolve_np,
    split_env,
)
from hvdtrain.launcher.tuning import horovod_settings


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
        return elastic_plan(options, [machine.python, script, *script_args], hosts, machine, cwd)
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
        argv = mpirun_argv(executable, options, np, hosts, scheduler, machine, yield_idle, user_env, settings)
        return LaunchPlan([*argv, *program], {}, launcher, controller, np, hosts, yield_idle, allocation, warnings,
                          interfaces=tuple(options.network_interface))
    if options.mpi_args and controller == "gloo":
        raise LaunchError("mpi_args only apply to the MPI controller; drop them or use --mpi")
    argv = horovodrun_argv(executable, options, np, hosts, controller, yield_idle, settings)
    env = {name: value for name, value in user_env.items() if value is not None}
    return LaunchPlan([*argv, *program], env, launcher, controller, np, hosts, yield_idle, allocation, warnings,
                      interfaces=tuple(options.network_interface))
