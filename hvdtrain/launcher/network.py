"""The job's own network address on this machine: where ``hvdtrain run`` listens, and nothing wider.

A job on this machine alone listens on loopback only. A multi-host job listens on the address of its
network interface: the one given with ``--network-interface``, or else the one this machine reaches
the first remote host from. Both the workers' report listener and Horovod's Gloo rendezvous server
bind there (Horovod's own binds every address, and answers anyone: docs/reliability.md, Security).
"""
from __future__ import annotations

import socket
from collections.abc import Sequence
from dataclasses import dataclass

from hvdtrain.launcher.errors import LaunchError
from hvdtrain.launcher.hosts import Host
from hvdtrain.launcher.reach import is_local

LOOPBACK = "127.0.0.1"


@dataclass(frozen=True)
class JobNetwork:
    address: str  # an IPv4 address of this machine
    interface: str | None  # its interface, when the job spans hosts


def interface_addresses() -> dict[str, list[str]]:
    """Each network interface of this machine and its IPv4 addresses."""
    import psutil  # a dependency of Horovod's launcher

    return {name: [a.address for a in addresses if a.family == socket.AF_INET]
            for name, addresses in psutil.net_if_addrs().items()}


def job_network(hosts: Sequence[Host] | None, interfaces: Sequence[str]) -> JobNetwork:
    """Where this job listens on this machine.

    Raises:
        LaunchError: a given interface does not exist here or has no IPv4 address.
    """
    remote = [host.name for host in hosts or () if not is_local(host.name)]
    if not remote and not interfaces:
        return JobNetwork(LOOPBACK, None)
    known = interface_addresses()
    if interfaces:
        name = interfaces[0]
        if not known.get(name):
            raise LaunchError(f"--network-interface {name}: this machine has no interface {name!r} with an IPv4 "
                              f"address (it has: {', '.join(n for n, a in sorted(known.items()) if a)})")
        return JobNetwork(known[name][0], name)
    source = route_source(remote[0])
    owner = next((name for name, addresses in known.items() if source in addresses), None)
    return JobNetwork(source, owner)


def route_source(host: str) -> str:
    """The address of this machine that packets to ``host`` leave from (nothing is sent)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect((host, 9))
        except OSError as err:
            raise LaunchError(f"no route from this machine to host {host!r} ({err}); check the host list, or give "
                              "the job's interface with --network-interface") from err
        return probe.getsockname()[0]
