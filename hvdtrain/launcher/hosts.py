"""Host lists (``-H host1:2,host2:4``) and hostfiles (``host slots=N`` or ``host:N`` lines)."""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

_COLON_FORM = re.compile(r"^(?P<name>[^\s:]+):(?P<slots>\S+)$")
_SLOTS_FORM = re.compile(r"^(?P<name>\S+)(?P<rest>(\s+\S+)*)$")
_KEY_VALUE = re.compile(r"^(?P<key>slots|max_slots|max-slots)=(?P<value>\S+)$")
LOCAL_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
FORMAT_HINT = "expected `host slots=N` or `host:N` (N a positive integer), one host per line"
LIST_HINT = "expected `host:N` entries separated by commas, e.g. `node1:4,node2:4`"


@dataclass(frozen=True)
class Host:
    """One machine and how many worker processes it may run."""

    name: str
    slots: int

    def __str__(self) -> str:
        return f"{self.name}:{self.slots}"


class HostError(ValueError):
    """A host list or hostfile entry is malformed (message says where and the expected format)."""


def _positive_int(text: str, what: str, hint: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise HostError(f"{what}: slots must be a positive integer, got {text!r}; {hint}")
    return int(text)


def parse_host_entry(entry: str, where: str = "host", hint: str = FORMAT_HINT) -> Host:
    """Parse ``host``, ``host:N`` or ``host slots=N`` (a bare host has 1 slot).

    Args:
        entry: the text of one entry, without comments.
        where: names the entry in error messages (e.g. ``hostfile x line 3``).
        hint: the expected format, appended to error messages.

    Raises:
        HostError: the entry is not in one of the three forms.
    """
    entry = entry.strip()
    what = f"{where}: {entry!r}"
    colon = _COLON_FORM.match(entry)
    if colon:
        return Host(colon["name"], _positive_int(colon["slots"], what, hint))
    match = _SLOTS_FORM.match(entry)
    if not match or not entry or ":" in match["name"]:
        raise HostError(f"{what} is not a host entry; {hint}")
    slots = 1
    for option in match["rest"].split():
        pair = _KEY_VALUE.match(option)
        if not pair:
            raise HostError(f"{what} has an unknown field {option!r}; {hint}")
        if pair["key"] == "slots":
            slots = _positive_int(pair["value"], what, hint)
    return Host(match["name"], slots)


def parse_hosts(spec: str | list[str]) -> list[Host]:
    """Parse a ``-H`` value: ``"h1:2,h2:4"`` or a list of such entries (from a config file).

    Raises:
        HostError: an entry is malformed or a host is listed twice.
    """
    entries = spec if isinstance(spec, list) else spec.split(",")
    hosts = [parse_host_entry(str(item), "--hosts", LIST_HINT) for item in entries if str(item).strip()]
    if not hosts:
        raise HostError(f"--hosts {spec!r} names no host; give e.g. `-H node1:4,node2:4`")
    _reject_duplicates(hosts, [f"entry {i + 1}" for i in range(len(hosts))], "--hosts")
    return hosts


def parse_hostfile(path: str | os.PathLike) -> list[Host]:
    """Read a hostfile: one ``host slots=N`` or ``host:N`` per line, ``#`` comments, blank lines.

    Raises:
        HostError: the file is missing, empty, or a line does not parse (the line number is named).
    """
    path = Path(path)
    if not path.is_file():
        raise HostError(f"hostfile {path} does not exist; create it with lines like `node1 slots=4`")
    hosts, places = [], []
    for number, raw in enumerate(path.read_text().splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if line:
            hosts.append(parse_host_entry(line, f"hostfile {path} line {number}"))
            places.append(f"line {number}")
    if not hosts:
        raise HostError(f"hostfile {path} lists no host; {FORMAT_HINT}")
    _reject_duplicates(hosts, places, f"hostfile {path}")
    return hosts


def _reject_duplicates(hosts: list[Host], places: list[str], where: str) -> None:
    seen: dict[str, str] = {}
    for host, place in zip(hosts, places):
        if host.name in seen:
            raise HostError(f"{where}: host {host.name!r} is listed twice ({seen[host.name]} and {place}); "
                            "list each host once with its total slots")
        seen[host.name] = place


def total_slots(hosts: list[Host]) -> int:
    """The number of processes the hosts can run together."""
    return sum(host.slots for host in hosts)


def format_hosts(hosts: list[Host]) -> str:
    """The ``-H`` form understood by both horovodrun and Open MPI's mpirun."""
    return ",".join(str(host) for host in hosts)


def processes_per_host(hosts: list[Host], np: int) -> list[int]:
    """How many of ``np`` processes land on each host when slots are filled in order (``--map-by slot``)."""
    counts, left = [], np
    for host in hosts:
        used = min(host.slots, left)
        counts.append(used)
        left -= used
    return counts
