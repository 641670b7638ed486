"""Training across two hosts made of network namespaces: the allreduce crosses a real veth link."""
from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests.launch import QUIET_ENV, REPO
from tests.multihost.netns import create_hosts, destroy_hosts, write_rsh_agent

pytestmark = pytest.mark.parallel


@pytest.fixture(scope="module")
def hosts():
    try:
        created = create_hosts()
    except (subprocess.CalledProcessError, FileNotFoundError) as err:
        pytest.skip(f"the kernel refuses network namespaces here ({err}); multi-host test not possible")
    yield created
    destroy_hosts(created)


def _mpirun(hosts, tmp_path, hostfile_hosts, *program):
    agent = write_rsh_agent(tmp_path / "netns-ssh.sh", hosts)
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("".join(f"{address} slots=1\n" for address in hostfile_hosts))
    subnet = hosts[0].address.rsplit(".", 1)[0] + ".0/24"
    env_flags = [flag for key in QUIET_ENV for flag in ("-x", key)]
    command = ["ip", "netns", "exec", hosts[0].namespace, "mpirun", "-np", str(len(hostfile_hosts)),
               "--allow-run-as-root", "--hostfile", str(hostfile), "--mca", "plm_rsh_agent", str(agent),
               "--mca", "btl", "self,tcp", "--mca", "btl_tcp_if_include", subnet,
               "--mca", "oob_tcp_if_include", subnet, "--bind-to", "none", "-x", "PATH", *env_flags,
               sys.executable, *program]
    return subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=REPO,
                          env={**__import__("os").environ, **QUIET_ENV})


def test_training_across_two_namespace_hosts(hosts, tmp_path):
    proc = _mpirun(hosts, tmp_path, [h.address for h in hosts], str(REPO / "examples" / "pytorch_digits.py"),
                   "--epochs", "15", "--output-dir", str(tmp_path / "run"), "--no-progress")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    accuracy = float(re.search(r"final val_accuracy=([0-9.]+) after 15 epochs on 2 workers", proc.stdout)[1])
    assert accuracy >= 0.95
    assert list((tmp_path / "run" / "checkpoints").glob("*.ckpt"))


def test_each_rank_runs_in_its_own_host(hosts, tmp_path):
    probe = ("import horovod.torch as hvd, socket, subprocess, torch; hvd.init(); "
             "addr = subprocess.run(['ip', '-4', '-br', 'addr'], capture_output=True, text=True).stdout; "
             "total = hvd.allreduce(torch.tensor([1.0]), op=hvd.Sum).item(); "
             "print('RANK', hvd.rank(), 'TOTAL', total, 'ADDR', addr.split()[-1], flush=True)")
    proc = _mpirun(hosts, tmp_path, [h.address for h in hosts], "-c", probe)
    assert proc.returncode == 0, proc.stderr[-3000:]
    seen = dict(re.findall(r"RANK (\d) TOTAL 2.0 ADDR (\S+)", proc.stdout))
    assert seen == {"0": f"{hosts[0].address}/24", "1": f"{hosts[1].address}/24"}


def test_unreachable_host_is_named_in_the_error(hosts, tmp_path):
    missing = hosts[0].address.rsplit(".", 1)[0] + ".9"
    proc = _mpirun(hosts, tmp_path, [hosts[0].address, missing], "-c", "print('never')")
    assert proc.returncode != 0
    assert f"unknown host {missing}" in proc.stderr


def _hvdtrain_run(hosts, tmp_path, hostfile_hosts, *program):
    """``hvdtrain run --hostfile`` from the first host, reaching the second through the namespace agent."""
    agent = write_rsh_agent(tmp_path / "netns-ssh.sh", hosts)
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("".join(f"{address} slots=1\n" for address in hostfile_hosts))
    subnet = hosts[0].address.rsplit(".", 1)[0] + ".0/24"
    mpi_args = (f"--mca plm_rsh_agent {agent} --mca btl self,tcp --mca btl_tcp_if_include {subnet} "
                f"--mca oob_tcp_if_include {subnet}")
    command = ["ip", "netns", "exec", hosts[0].namespace, sys.executable, "-m", "hvdtrain.cli", "run", "--mpi",
               "--hostfile", str(hostfile), "-np", str(len(hostfile_hosts)), "--mpi-args", mpi_args, *program]
    return subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=REPO,
                          env={**__import__("os").environ, **QUIET_ENV})


def test_hvdtrain_run_with_a_hostfile_trains_across_the_two_hosts(hosts, tmp_path):
    proc = _hvdtrain_run(hosts, tmp_path, [h.address for h in hosts], "examples/pytorch_digits.py",
                         "--epochs", "15", "--output-dir", str(tmp_path / "run"), "--no-progress")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    accuracy = float(re.search(r"final val_accuracy=([0-9.]+) after 15 epochs on 2 workers", proc.stdout)[1])
    assert accuracy >= 0.95


def test_hvdtrain_run_names_the_unreachable_host_before_launching(hosts, tmp_path):
    missing = hosts[0].address.rsplit(".", 1)[0] + ".9"
    proc = _hvdtrain_run(hosts, tmp_path, [hosts[0].address, missing], "examples/pytorch_digits.py")
    assert proc.returncode == 2
    assert "cannot reach 1 of 1 remote host(s)" in proc.stderr
    assert f"{missing}: rsh agent: unknown host {missing}" in proc.stderr
    assert "--skip-host-check" in proc.stderr
