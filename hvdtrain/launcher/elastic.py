"""Elastic training (``hvdtrain run --elastic``): worker counts and the host discovery script for horovodrun.

Horovod's elastic driver (Gloo only) runs a host discovery script about once a second; every
line it prints is ``host:slots``. Workers start on the hosts listed, and the job grows or shrinks
with the list between ``--min-np`` and ``--max-np`` workers. When a worker fails, the driver
blacklists its whole host; ``--blacklist-cooldown-range`` lets a host come back later.
Everything here is pure: the script's text is built here and written by ``run``.
"""
from __future__ import annotations

import os
import secrets
import shlex
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

from hvdtrain.core.distributed import LOCAL_SLOT_HOSTS
from hvdtrain.launcher import hosts as hosts_module
from hvdtrain.launcher.config import RunOptions
from hvdtrain.launcher.errors import LaunchError
from hvdtrain.launcher.hosts import LOCAL_NAMES, Host
from hvdtrain.launcher.hosts import total_slots as count_slots
from hvdtrain.launcher.machine import Machine
from hvdtrain.launcher.plan import GeneratedScript, LaunchPlan, horovodrun_argv
from hvdtrain.launcher.resolve import ALLOCATION_VARIABLES, check_fits_hosts, gpu_warnings, resolve_launcher, split_env
from hvdtrain.launcher.tuning import horovod_settings

# Seconds a blacklisted host stays out: Horovod waits LOW * 2**(times blacklisted) plus up to LOW more,
# at most HIGH. 10 100: a lost slot comes back after 20-30 s the first time, after 100 s at most.
DEFAULT_COOLDOWN_RANGE = (10, 100)
# Linux's loopback interface: a local job names it, as Horovod's start-up wait for two hosts is skipped then.
LOOPBACK_INTERFACE = "lo"
# Leading zeros an octet of a local slot name gets at most (short names; 16**3 = 4096 slots).
_ZEROS_PER_OCTET = 16
ELASTIC_ONLY_OPTIONS = {"min_np": "--min-np", "max_np": "--max-np", "host_discovery_script": "--host-discovery-script",
                        "slots_per_host": "--slots-per-host", "elastic_timeout": "--elastic-timeout",
                        "reset_limit": "--reset-limit", "blacklist_cooldown_range": "--blacklist-cooldown-range"}


def local_slot_hosts(count: int) -> list[str]:
    """``count`` distinct names of this machine, one per worker slot: 127.0.0.1, 127.0.0.01, 127.0.0.001, ...

    Horovod's elastic driver blacklists a whole host when one of its workers fails, and stops
    the job when every host is blacklisted. Listed as ``localhost:N``, this machine would lose
    all N workers to one failure; as N hosts of one slot each, it loses one. The names are
    127.0.0.1 with leading zeros added to its octets, which ``inet_aton`` reads as the same
    numbers, so all resolve to 127.0.0.1 and Horovod starts their workers locally, without ssh.
    The last octet gets up to 15 zeros, then the third and the second take turns (names stay short).

    Raises:
        ValueError: ``count`` is more than the 4096 names there are.
    """
    if count > _ZEROS_PER_OCTET ** 3:
        raise ValueError(f"{count} local slots is more than the {_ZEROS_PER_OCTET ** 3} names for them")
    names = []
    for index in range(count):
        second, rest = divmod(index, _ZEROS_PER_OCTET ** 2)
        third, fourth = divmod(rest, _ZEROS_PER_OCTET)
        names.append(f"127.{'0' * (second + 1)}.{'0' * (third + 1)}.{'0' * fourth}1")
    return names


def elastic_sizes(min_np: int | None, np: int | None, max_np: int | None, slots: int | None) -> tuple[int, int, int]:
    """(min_np, np, max_np) of an elastic job, defaults filled in and their order checked.

    Args:
        min_np, np, max_np: as given (None: not given).
        slots: the slots the discovery lists at the start (None: unknown, the user's own script).

    ``np`` (workers to start with) defaults to the slots listed (at most ``max_np``), ``max_np`` to
    ``np``, ``min_np`` to 1: the job goes on as long as one worker is left.

    Raises:
        LaunchError: the numbers are not ``min_np <= np <= max_np``, or nothing gives ``np``.
    """
    if np is None:
        known = [count for count in (slots, max_np) if count is not None]
        if not known:
            raise LaunchError("the number of workers is not set: with --host-discovery-script give -np N (the "
                              "workers to start with) or --max-np N; hvdtrain cannot count the hosts the script lists")
        np = min(known)
    max_np = np if max_np is None else max_np
    min_np = 1 if min_np is None else min_np
    if min_np > np:
        raise LaunchError(f"--min-np {min_np} is more than -np {np}: the job starts with -np workers and goes on "
                          f"while at least --min-np are left; lower --min-np to at most {np} or raise -np")
    if np > max_np:
        raise LaunchError(f"-np {np} is more than --max-np {max_np}: the job starts with -np workers and grows to "
                          f"at most --max-np; raise --max-np to at least {np} or lower -np")
    return min_np, np, max_np


def shared_local_host_warnings(hosts: list[Host]) -> tuple[str, ...]:
    """A warning for each local name given several slots: one failed worker takes all of them out."""
    return tuple(f"{host.name} runs {host.slots} workers as one host: Horovod's elastic driver drops a whole host "
                 f"when one of its workers fails, so one failure stops all {host.slots}; leave out -H/--hostfile to "
                 "run this machine's slots as hosts of their own" for host in hosts
                 if host.name in LOCAL_NAMES and host.slots > 1)


def check_elastic_launch(controller: str | None, launcher: str) -> None:
    """Fail unless the controller and launcher asked for can run elastic training (Gloo, horovodrun)."""
    if controller == "mpi":
        raise LaunchError("elastic training runs on Horovod's Gloo controller only; drop --mpi (or `controller: mpi` "
                          "from the config file), or drop --elastic for a fixed-size MPI job")
    if launcher == "mpirun":
        raise LaunchError("elastic training is started by horovodrun (its elastic driver restarts workers and runs "
                          "Gloo's rendezvous), not mpirun; drop --launcher mpirun (or `launcher: mpirun` from the "
                          "config file), or drop --elastic for a fixed-size MPI job")


def reject_elastic_options(given: dict[str, object]) -> None:
    """Fail when options of elastic training are set without ``--elastic`` (``given``: option key -> value)."""
    flags = [flag for key, flag in ELASTIC_ONLY_OPTIONS.items() if given.get(key) is not None]
    if flags:
        raise LaunchError(f"{', '.join(flags)} only appl{'ies' if len(flags) == 1 else 'y'} to elastic training; "
                          f"add --elastic (or `elastic: true` in the config file), or drop {' and '.join(flags)}")


def check_discovery_script(script: str, cwd: str | os.PathLike | None = None) -> str:
    """The absolute path of the user's discovery script; fails unless it is an executable file."""
    path = Path(cwd or os.getcwd()) / script
    if not path.is_file():
        raise LaunchError(f"--host-discovery-script {script}: no such file (looked in {Path(cwd or os.getcwd())}); "
                          "give an executable that prints the available hosts, one `host:slots` per line")
    if not os.access(path, os.X_OK):
        raise LaunchError(f"--host-discovery-script {script} is not executable; run `chmod +x {shlex.quote(script)}`")
    return str(path.resolve())


def discovery_path(directory: str | None = None) -> str:
    """Where the generated discovery script goes: a new, uniquely named directory in the temp directory."""
    return str(Path(directory or tempfile.gettempdir()) / f"hvdtrain-elastic-{secrets.token_hex(4)}" /
               "discover-hosts")


_HEADER = ("#!/bin/sh\n"
           "# Host discovery for `horovodrun --host-discovery-script`, written by `hvdtrain run --elastic`\n"
           "# and removed when the job ends. It prints the hosts available now, one `host:slots` per line")


def fixed_discovery(hosts: list[Host], why: str) -> str:
    """A discovery script that prints ``hosts``; ``why`` ends the header comment (what the hosts are)."""
    return f"{_HEADER}:\n# {why}.\nprintf '%s\\n' {' '.join(shlex.quote(str(host)) for host in hosts)}\n"


def hostfile_discovery(hostfile: str, python: str) -> str:
    """A discovery script that reads ``hostfile`` on every call (with hvdtrain's hostfile parser).

    Editing the hostfile while the job runs adds or removes hosts. A file that does not parse
    makes the script fail with the reason on stderr; Horovod then logs it and keeps the hosts
    it had. The parser is loaded from its file alone (``python -I -S``, no package imports),
    so a call takes some 30 ms.
    """
    code = (f"import importlib.util, sys\n"
            f"spec = importlib.util.spec_from_file_location('hvdtrain_hosts', {hosts_module.__file__!r})\n"
            f"hosts = importlib.util.module_from_spec(spec)\n"
            f"sys.modules[spec.name] = hosts\n"
            f"spec.loader.exec_module(hosts)\n"
            f"try:\n"
            f"    print('\\n'.join(str(host) for host in hosts.parse_hostfile({hostfile!r})))\n"
            f"except hosts.HostError as err:\n"
            f"    sys.exit(f'hvdtrain host discovery: {{err}}')\n")
    return (f"{_HEADER}:\n# the hosts of {hostfile}, read again on every call.\n"
            f"exec {shlex.quote(python)} -I -S - <<'PYTHON'\n{code}PYTHON\n")


@dataclass(frozen=True)
class ElasticDiscovery:
    """Where the hosts of an elastic job come from, and how many workers it runs."""

    sizes: tuple[int, int, int]  # min_np, np, max_np
    script: str  # the discovery script horovodrun runs
    generated: GeneratedScript | None = None  # written by hvdtrain run for the job
    local_slot_hosts: tuple[str, ...] = ()  # this machine's slot names, when it is the only host


def elastic_plan(options: RunOptions, program: list[str], hosts: list[Host] | None, machine: Machine,
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
    argv = horovodrun_argv(executable, replace(options, network_interface=interfaces), np, None, "gloo", False,
                            horovod_settings(options), _elastic_flags(options, discovery))
    # Each worker runs under its agent, which ends it when it stops beating (hvdtrain.launcher.agent).
    supervised = [machine.python, "-m", "hvdtrain.launcher.agent", *program]
    return LaunchPlan([*argv, *supervised], env, "horovodrun", "gloo", np, hosts, False, allocation, warnings,
                      discovery.generated, tuple(interfaces), elastic=True,
                      hosts_may_change=bool(options.host_discovery_script or options.hostfile))


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
