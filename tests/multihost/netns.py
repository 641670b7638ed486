"""Two "hosts" on one machine: network namespaces joined by a veth pair (198.18.0.0/15, test-only)."""
from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

SUBNET = "198.18.7"


@dataclass
class Host:
    namespace: str
    address: str
    link: str  # its end of the veth pair


def set_link(host: Host, state: str) -> None:
    """``up`` or ``down``: cut or restore the network between the two hosts, from ``host``'s side."""
    _ip("-n", host.namespace, "link", "set", host.link, state)


# A TCP connect to a closed port: "refused" is the other host answering.
_ANSWER_PROBE = ("import socket, sys\n"
                 "try:\n    socket.create_connection((sys.argv[1], 9), timeout=1).close()\n"
                 "except ConnectionRefusedError:\n    sys.exit(0)\n"
                 "except OSError:\n    sys.exit(1)\n")


def wait_until_connected(hosts: list[Host], timeout_s: float = 30) -> None:
    """Return once each host gets a TCP answer from the other; raises after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    for source, target in ((hosts[0], hosts[1]), (hosts[1], hosts[0])):
        while subprocess.run(["ip", "netns", "exec", source.namespace, sys.executable, "-c", _ANSWER_PROBE,
                              target.address], capture_output=True, timeout=30).returncode != 0:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{source.namespace} still cannot reach {target.address} after {timeout_s} s")
            time.sleep(0.2)


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check, timeout=30)


def create_hosts(prefix: str = "hvdt") -> list[Host]:
    """Create two namespaces with one veth end each; returns them. Raises if the kernel refuses."""
    # Both ends get one name inside their hosts, as the hosts of a cluster usually do.
    hosts = [Host(f"{prefix}-a", f"{SUBNET}.1", f"{prefix}-net"), Host(f"{prefix}-b", f"{SUBNET}.2", f"{prefix}-net")]
    destroy_hosts(hosts)
    for host in hosts:
        _ip("netns", "add", host.namespace)
    _ip("link", "add", f"{prefix}-va", "type", "veth", "peer", "name", f"{prefix}-vb")
    for host, created in zip(hosts, (f"{prefix}-va", f"{prefix}-vb")):
        _ip("link", "set", created, "netns", host.namespace)
        _ip("-n", host.namespace, "link", "set", created, "name", host.link)
        _ip("-n", host.namespace, "addr", "add", f"{host.address}/24", "dev", host.link)
        _ip("-n", host.namespace, "link", "set", host.link, "up")
        _ip("-n", host.namespace, "link", "set", "lo", "up")
    return hosts


def destroy_hosts(hosts: list[Host]) -> None:
    for host in hosts:
        _ip("netns", "del", host.namespace, check=False)


def write_rsh_agent(path: Path, hosts: list[Host]) -> Path:
    """An ssh stand-in for mpirun: runs the remote command inside the host's namespace."""
    cases = "\n".join(f'  {h.address}) ns={h.namespace} ;;' for h in hosts)
    path.write_text(f"""#!/bin/sh
# Usage (as mpirun calls ssh): agent HOST COMMAND...
host=$1; shift
case "$host" in
{cases}
  *) echo "rsh agent: unknown host $host (known: {' '.join(h.address for h in hosts)})" >&2; exit 255 ;;
esac
exec ip netns exec "$ns" sh -c "$*"
""")
    path.chmod(0o755)
    return path
