"""Before a multi-host launch: check that every remote host answers the remote shell, and name those that do not.

Without this, an unreachable host shows up as an Open MPI daemon failure or a hang while the
launcher retries; here it is one message with the host, the shell's own reason, and the fix.
"""
from __future__ import annotations

import shlex
import socket
import subprocess
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from hvdtrain.launcher.errors import LaunchError

LOCAL_NAMES = {"localhost", "127.0.0.1", "::1"}
CHECK_TIMEOUT = 30.0


def is_local(name: str) -> bool:
    """True if ``name`` is this machine: a loopback name, its host name, or an address assigned here."""
    if name in LOCAL_NAMES or name in (socket.gethostname(), socket.getfqdn()):
        return True
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(name, None)}
    except (socket.gaierror, UnicodeError):
        return False
    return any(_is_assigned_here(address) for address in addresses)


def _is_assigned_here(address: str) -> bool:
    # Binding succeeds only to an address of one of this machine's interfaces.
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        try:
            probe.bind((address, 0))
        except OSError:
            return False
    return True


def remote_shell(mpi_args: Sequence[str], ssh_port: int | None = None, ssh_identity_file: str | None = None
                 ) -> list[str]:
    """The command the launcher reaches hosts with: ``--mca plm_rsh_agent`` if given, else ssh in batch mode."""
    args = list(mpi_args)
    for i, token in enumerate(args[:-2]):
        if token in ("--mca", "-mca") and args[i + 1] == "plm_rsh_agent":
            return shlex.split(args[i + 2])
    command = ["ssh", "-o", "BatchMode=yes", "-o", "ConnectTimeout=10"]
    if ssh_port:
        command += ["-p", str(ssh_port)]
    if ssh_identity_file:
        command += ["-i", ssh_identity_file]
    return command


def unreachable_hosts(hosts: Sequence[str], shell: Sequence[str], timeout: float = CHECK_TIMEOUT
                      ) -> dict[str, str]:
    """Run ``SHELL HOST true`` on every host at once; returns ``{host: reason}`` for those that failed."""
    def probe(host: str) -> str | None:
        try:
            proc = subprocess.run([*shell, host, "true"], capture_output=True, text=True, timeout=timeout,
                                  stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            return f"no answer within {timeout:g} s"
        except OSError as err:
            return f"cannot run {shell[0]!r}: {err}"
        if proc.returncode == 0:
            return None
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        return lines[-1].strip() if lines else f"exit status {proc.returncode}"

    with ThreadPoolExecutor(max_workers=min(32, max(1, len(hosts)))) as pool:
        reasons = dict(zip(hosts, pool.map(probe, hosts)))
    return {host: reason for host, reason in reasons.items() if reason is not None}


def check_reachable(hosts: Sequence[str], shell: Sequence[str], timeout: float = CHECK_TIMEOUT) -> None:
    """Raise ``LaunchError`` naming every remote host that does not answer ``SHELL HOST true``."""
    remote = [host for host in hosts if not is_local(host)]
    failed = unreachable_hosts(remote, shell, timeout) if remote else {}
    if failed:
        details = "; ".join(f"{host}: {reason}" for host, reason in failed.items())
        raise LaunchError(
            f"cannot reach {len(failed)} of {len(remote)} remote host(s) with `{shlex.join(shell)}`: {details}. "
            f"Check that `{shlex.join([*shell, next(iter(failed)), 'true'])}` works from this machine without a "
            "password, or fix the host list; --skip-host-check launches without this check")
