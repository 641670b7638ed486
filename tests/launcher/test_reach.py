"""The pre-launch host check: which hosts are local, which shell reaches the others, and the error."""
from __future__ import annotations

import pytest

from hvdtrain.launcher.errors import LaunchError
from hvdtrain.launcher.reach import check_reachable, is_local, remote_shell, unreachable_hosts


def test_loopback_and_this_machine_are_local_other_addresses_are_not():
    assert is_local("localhost") and is_local("127.0.0.1")
    assert not is_local("198.18.200.7")  # test-net address assigned to no interface here
    assert not is_local("no-such-host.invalid")


def test_remote_shell_is_the_rsh_agent_when_given_else_ssh_in_batch_mode():
    assert remote_shell(["--mca", "btl", "self,tcp", "--mca", "plm_rsh_agent", "/x/agent -q"]) == ["/x/agent", "-q"]
    assert remote_shell([], ssh_port=2222, ssh_identity_file="/k") == [
        "ssh", "-o", "BatchMode=yes", "-o", "ConnectTimeout=10", "-p", "2222", "-i", "/k"]


def test_hosts_whose_shell_fails_are_reported_with_its_reason():
    shell = ["sh", "-c", 'if [ "$0" = good ]; then exit 0; fi; echo "no route to $0" >&2; exit 255']
    assert unreachable_hosts(["good", "bad"], shell) == {"bad": "no route to bad"}
    assert unreachable_hosts(["slow"], ["sh", "-c", "sleep 5"], timeout=0.5) == {"slow": "no answer within 0.5 s"}


def test_check_names_the_unreachable_host_and_skips_local_ones():
    shell = ["sh", "-c", 'echo "connection refused by $0" >&2; exit 255']
    check_reachable(["localhost", "127.0.0.1"], shell)  # local hosts are never probed
    with pytest.raises(LaunchError, match=r"cannot reach 1 of 1 remote host\(s\).*203\.0\.113\.5: connection "
                                          r"refused by 203\.0\.113\.5.*--skip-host-check"):
        check_reachable(["localhost", "203.0.113.5"], shell)
