"""Host lists and hostfiles: both formats, and errors that name the line and the expected format."""
from __future__ import annotations

import pytest

from hvdtrain.launcher.hosts import (
    Host,
    HostError,
    format_hosts,
    parse_host_entry,
    parse_hostfile,
    parse_hosts,
    processes_per_host,
    total_slots,
)


@pytest.mark.parametrize(("entry", "expected"), [
    ("node1 slots=4", Host("node1", 4)),
    ("node1:4", Host("node1", 4)),
    ("node1", Host("node1", 1)),
    ("10.0.0.7   slots=2 max_slots=8", Host("10.0.0.7", 2)),
    ("  gpu-box.example.org:8 ", Host("gpu-box.example.org", 8)),
])
def test_host_entry_forms(entry, expected):
    assert parse_host_entry(entry) == expected


def test_hostfile_with_comments_blank_lines_and_both_forms(tmp_path):
    hostfile = tmp_path / "hosts"
    hostfile.write_text("# cluster\nnode1 slots=4\n\nnode2:2   # the small one\nnode3\n")
    hosts = parse_hostfile(hostfile)
    assert hosts == [Host("node1", 4), Host("node2", 2), Host("node3", 1)]
    assert total_slots(hosts) == 7
    assert format_hosts(hosts) == "node1:4,node2:2,node3:1"


@pytest.mark.parametrize(("line", "detail"), [
    ("node1 slots=two", "slots must be a positive integer, got 'two'"),
    ("node1:0", "slots must be a positive integer, got '0'"),
    ("node1 cores=4", "unknown field 'cores=4'"),
    ("node1 4", "unknown field '4'"),
])
def test_bad_hostfile_line_names_file_line_and_format(tmp_path, line, detail):
    hostfile = tmp_path / "hosts"
    hostfile.write_text(f"node0 slots=1\n# comment\n{line}\n")
    with pytest.raises(HostError) as err:
        parse_hostfile(hostfile)
    message = str(err.value)
    assert f"hostfile {hostfile} line 3" in message
    assert detail in message
    assert "`host slots=N` or `host:N`" in message


def test_missing_empty_and_duplicate_hostfiles(tmp_path):
    with pytest.raises(HostError, match="does not exist"):
        parse_hostfile(tmp_path / "nope")
    (tmp_path / "empty").write_text("# nothing\n\n")
    with pytest.raises(HostError, match="lists no host"):
        parse_hostfile(tmp_path / "empty")
    (tmp_path / "twice").write_text("a:1\nb:1\na slots=2\n")
    with pytest.raises(HostError, match=r"'a' is listed twice \(line 1 and line 3\)"):
        parse_hostfile(tmp_path / "twice")


def test_host_list_from_string_or_list():
    assert parse_hosts("a:2,b:3") == [Host("a", 2), Host("b", 3)]
    assert parse_hosts(["a:2", "b"]) == [Host("a", 2), Host("b", 1)]
    with pytest.raises(HostError, match="--hosts: 'a:x'"):
        parse_hosts("a:x")
    with pytest.raises(HostError, match="names no host"):
        parse_hosts(" , ")


def test_processes_fill_slots_in_order():
    hosts = [Host("a", 2), Host("b", 2), Host("c", 2)]
    assert processes_per_host(hosts, 3) == [2, 1, 0]
    assert processes_per_host(hosts, 6) == [2, 2, 2]
