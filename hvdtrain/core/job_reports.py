"""What workers tell ``hvdtrain run`` while a job runs: one small datagram a second, and one when a worker fails.

``hvdtrain run`` listens on the job's own address (loopback for a job on one machine) and hands
every worker the address and a random per-job token in the environment; a datagram without the
token is dropped. From these reports the launcher knows which rank failed first and on which host,
and, when a collective times out, which ranks never joined it (silent, or busy elsewhere).
"""
from __future__ import annotations

import hmac
import json
import socket
from dataclasses import asdict, dataclass

ADDRESS_ENV = "HVDTRAIN_REPORT_ADDRESS"  # "ip:port[,ip:port]": the launcher's listeners; a report goes to each
TOKEN_ENV = "HVDTRAIN_REPORT_TOKEN"
INTERVAL_S = 1.0  # how often a worker reports that it is alive

ALIVE, FAILED = "alive", "failed"
# Why a worker failed: its collective waited past the watchdog's timeout, or Python raised.
COLLECTIVE_TIMEOUT, EXCEPTION = "collective-timeout", "exception"
MAX_TEXT = 2000
MAX_DATAGRAM = 65507


@dataclass(frozen=True)
class Report:
    """One worker's state: alive (and what it waits in, if anything), or failed (and why)."""

    rank: int
    host: str  # the host name, and the address it reaches the launcher from when that is not loopback
    pid: int
    kind: str = ALIVE
    waiting: str | None = None  # the collective it waits in, e.g. "the gradient allreduce of step 6"
    waited_s: float = 0.0
    failure: str | None = None  # COLLECTIVE_TIMEOUT or EXCEPTION
    message: str | None = None  # the failure, in one line

    def where(self) -> str:
        rank = f"rank {self.rank}" if self.rank >= 0 else "a worker"
        return f"{rank} (host {self.host}, pid {self.pid})"


def encode(report: Report, token: str) -> bytes:
    fields = asdict(report)
    for name in ("message", "waiting"):  # a datagram stays small: long texts are cut
        if fields[name] and len(fields[name]) > MAX_TEXT:
            fields[name] = fields[name][:MAX_TEXT] + "..."
    return json.dumps({"token": token, **fields}).encode()


FIELD_TYPES = {"rank": int, "host": str, "pid": int, "kind": str, "waiting": (str, type(None)),
               "waited_s": (int, float), "failure": (str, type(None)), "message": (str, type(None))}


def decode(data: bytes, token: str) -> Report | None:
    """The report in ``data``, or None when it lacks this job's token or is not a report (any datagram
    can arrive: nothing sent to the listener may stop it)."""
    try:
        fields = json.loads(data)
    except (ValueError, RecursionError):
        return None
    if not isinstance(fields, dict) or not isinstance(fields.get("token"), str):
        return None
    if not hmac.compare_digest(fields.pop("token"), token):
        return None
    if set(fields) != set(FIELD_TYPES) or not all(isinstance(fields[k], t) for k, t in FIELD_TYPES.items()):
        return None
    return Report(**fields)


def udp_socket(host: str) -> socket.socket:
    """A datagram socket of ``host``'s address family."""
    return socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)


def parse_addresses(value: str) -> list[tuple[str, int]]:
    """``"ip:port,ip:port"`` -> [(ip, port), ...].

    Raises:
        ValueError: an entry is not an address with a port.
    """
    addresses = []
    for entry in value.split(","):
        host, _, port = entry.strip().rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"{ADDRESS_ENV}={value!r}: {entry!r} is not HOST:PORT")
        addresses.append((host, int(port)))
    return addresses
