"""The job's own network address on this machine: where ``hvdtrain run`` listens, and nothing wider.

A job on this machine alone listens on loopback only. A multi-host job listens on the address of its
network interface: the one given with ``--network-interface``, or else the one this machine reaches
the first remote host from. Both the workers' report listener and Horovod's Gloo rendezvous server
bind there (Horovod's own binds every address, and answers anyone: docs/reliability.md, Security).
Where that address cannot be known (an elastic job whose hosts may change, given no interface), they
listen on every address, and ``hvdtrain run`` says so.
"""
from __future__ import annotations

import socket
from collections.abc import Sequence
from dataclasses import dataclass

from hvdtrain.launcher.errors import LaunchError
from hvdtrain.launcher.hosts import Host
from hvdtrain.launcher.reach import is_local

LOOPBACK = "127.0.0.1"
EVERY_ADDRESS = "0.0.0.0"


@dataclass(frozen=True)
class JobNetwork:
    address: str  # an IPv4 address of this machine, or EVERY_ADDRESS
    interface: str | None = None  # its interface, when the job spans hosts
    warning: str | None = None  # why it listens on every address

    @property
    def everywhere(self) -> bool:
        return self.address == EVERY_ADDRESS


def interface_addresses() -> dict[str, list[str]]:
    """Each network interface of this machine and its IPv4 addresses."""
    import psutil  # a dependency of Horovod's launcher

    return {name: [a.address for a in addresses if a.family == socket.AF_INET]
            for name, addresses in psutil.net_if_addrs().items()}


def job_network(hosts: Sequence[Host] | None, interfaces: Sequence[str], hosts_may_change: bool = False
                ) -> JobNetwork:
    """Where this job listens on this machine.

    Args:
        hosts: the job's hosts (None: this machine alone).
        interfaces: ``--network-interface`` as given.
        hosts_may_change: an elastic job whose hosts come from a discovery script or a hostfile: a
            remote host may join later, so loopback is not enough.

    Raises:
        LaunchError: a given interface does not exist here or has no IPv4 address.
    """
    if interfaces:
        return _of_interface(interfaces[0])
    remote = [host.name for host in hosts or () if not is_local(host.name)]
    if remote:
        source = route_source(remote[0])
        owner = next((name for name, addresses in interface_addresses().items() if source in addresses), None)
        if source is None or owner is None:
            return JobNetwork(EVERY_ADDRESS, warning=f"this machine's address toward host {remote[0]!r} is unknown")
        return _of_interface(owner)
    if hosts_may_change:
        return JobNetwork(EVERY_ADDRESS, warning="the hosts of this elastic job may change")
    return JobNetwork(LOOPBACK)


def _of_interface(name: str) -> JobNetwork:
    """The address Horovod gives the workers for interface ``name``: its last IPv4 address."""
    known = interface_addresses()
    if not known.get(name):
        raise LaunchError(f"--network-interface {name}: this machine has no interface {name!r} with an IPv4 "
                          f"address (it has: {', '.join(n for n, a in sorted(known.items()) if a)})")
    return JobNetwork(known[name][-1], name)


def route_source(host: str) -> str | None:
    """The address of this machine that packets to ``host`` leave from (nothing is sent); None when the
    name does not resolve here (an ssh alias, say) or has no route."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect((host, 9))
        except OSError:
            return None
        return probe.getsockname()[0]
