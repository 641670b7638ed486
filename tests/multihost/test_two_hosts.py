"""Training across two hosts made of network namespaces: the allreduce crosses a real veth link."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.launch import QUIET_ENV, REPO, reached_epoch
from tests.multihost.netns import create_hosts, destroy_hosts, set_link, wait_until_connected, write_rsh_agent

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
    # Each rank writes its own file: mpirun interleaves the two ranks' stdout under load.
    probe = ("import horovod.torch as hvd, pathlib, subprocess, sys, torch; hvd.init(); "
             "addr = subprocess.run(['ip', '-4', '-br', 'addr'], capture_output=True, text=True).stdout; "
             "total = hvd.allreduce(torch.tensor([1.0]), op=hvd.Sum, name='probe').item(); "
             "pathlib.Path(sys.argv[1], f'rank-{hvd.rank()}').write_text(f'{total} {addr.split()[-1]}')")
    proc = _mpirun(hosts, tmp_path, [h.address for h in hosts], "-c", probe, str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    seen = {path.name: path.read_text() for path in tmp_path.glob("rank-*")}
    assert seen == {"rank-0": f"2.0 {hosts[0].address}/24", "rank-1": f"2.0 {hosts[1].address}/24"}


def test_unreachable_host_is_named_in_the_error(hosts, tmp_path):
    missing = hosts[0].address.rsplit(".", 1)[0] + ".9"
    proc = _mpirun(hosts, tmp_path, [hosts[0].address, missing], "-c", "print('never')")
    assert proc.returncode != 0
    assert f"unknown host {missing}" in proc.stderr


def _hvdtrain_run_command(hosts, tmp_path, hostfile_hosts, *program):
    """``hvdtrain run --mpi --hostfile`` from the first host, reaching the second through the namespace agent."""
    agent = write_rsh_agent(tmp_path / "netns-ssh.sh", hosts)
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("".join(f"{address} slots=1\n" for address in hostfile_hosts))
    subnet = hosts[0].address.rsplit(".", 1)[0] + ".0/24"
    mpi_args = (f"--mca plm_rsh_agent {agent} --mca btl self,tcp --mca btl_tcp_if_include {subnet} "
                f"--mca oob_tcp_if_include {subnet}")
    return ["ip", "netns", "exec", hosts[0].namespace, sys.executable, "-m", "hvdtrain.cli", "run", "--mpi",
            "--hostfile", str(hostfile), "-np", str(len(hostfile_hosts)), "--mpi-args", mpi_args, *program]


def _hvdtrain_run(hosts, tmp_path, hostfile_hosts, *program):
    command = _hvdtrain_run_command(hosts, tmp_path, hostfile_hosts, *program)
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


# Ranks give up 10 s into a collective the cut left waiting; hvdtrain run gives the launcher 10 s more.
CUT_ENV = {"HVDTRAIN_COLLECTIVE_TIMEOUT": "10", "HVDTRAIN_FAILURE_GRACE": "10"}
# The bound on the job's end after the cut: the collective timeout, the grace, and a busy machine's slack.
CUT_BOUND_S = 10 + 10 + 40


def _start_across_the_hosts(hosts, tmp_path):
    """``hvdtrain run --mpi`` from the first host over both, in the background."""
    out = tmp_path / "run"
    command = _hvdtrain_run_command(hosts, tmp_path, [h.address for h in hosts], "examples/pytorch_digits.py",
                                    "--epochs", "5000", "--no-progress", "--output-dir", str(out))
    env = {**os.environ, **QUIET_ENV, **CUT_ENV}
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO, env=env)
    return proc, out


def _job_processes(marker: str) -> list[int]:
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            if marker.encode() in (entry / "cmdline").read_bytes() and int(entry.name) != os.getpid():
                found.append(int(entry.name))
        except OSError:
            continue
    return found


@pytest.mark.timeout(300)
@pytest.mark.parametrize("cut_side", [0, 1], ids=["launcher-host-cut", "other-host-cut"])
def test_a_network_cut_ends_the_job_and_names_the_rank_that_failed(hosts, tmp_path, cut_side):
    # MPI only: Horovod's Gloo cannot connect across these namespaces (its devices bind 127.0.0.1, plain
    # horovodrun too); tests/launcher/test_run_parallel.py has the Gloo job that hangs after a failure.
    proc, out = _start_across_the_hosts(hosts, tmp_path)
    try:
        deadline = time.monotonic() + 180
        while not reached_epoch(out / "checkpoints", 3):
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                stdout, stderr = proc.communicate(timeout=30)
                raise AssertionError(f"the job never reached epoch 3 (exit {proc.returncode}):\n"
                                     f"{stdout[-3000:]}\n{stderr[-5000:]}")
            time.sleep(0.2)
        set_link(hosts[cut_side], "down")
        try:
            _stdout, stderr = proc.communicate(timeout=CUT_BOUND_S)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"hvdtrain run still waited {CUT_BOUND_S} s after the cut") from None
        deadline = time.monotonic() + 10
        while _job_processes(str(tmp_path)) and time.monotonic() < deadline:
            time.sleep(0.2)
        left = _job_processes(str(tmp_path))  # the other host's daemon included (its arguments name tmp_path)
    finally:
        set_link(hosts[cut_side], "up")
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pid in _job_processes(str(tmp_path)):  # what a failed run left
            os.kill(pid, 9)
        wait_until_connected(hosts)  # the next test's daemons connect at once
    assert not left, f"processes of the job are left: {left}"
    assert proc.returncode != 0, stderr[-5000:]
    named = re.search(r"hvdtrain run: rank (\d) \(host \S+ (198\.18\.\S+), pid \d+\) failed first: .*collective "
                      r"timeout 10 s", stderr)
    assert named, stderr[-5000:]
    assert named[2] == hosts[int(named[1])].address, "the rank is named with its own host's address"


# Run on one host: the rendezvous server must refuse that host's own non-loopback address.
RENDEZVOUS_PROBE = r"""
import os, socket, sys
import horovod.torch as hvd
hvd.init()
port = int(os.environ["HOROVOD_GLOO_RENDEZVOUS_PORT"])
def answer(address):
    try:
        socket.create_connection((address, port), timeout=5).close()
        return "open"
    except ConnectionRefusedError:
        return "refused"
if hvd.rank() == 0:
    print(f"RENDEZVOUS {os.environ['HOROVOD_GLOO_RENDEZVOUS_ADDR']} loopback={answer('127.0.0.1')} "
          f"network={answer(sys.argv[1])}", flush=True)
"""


@pytest.mark.parametrize("flags", [["--gloo", "-np", "2"], ["--elastic", "--min-np", "1", "-np", "2"]],
                         ids=["gloo", "elastic"])
def test_a_one_host_jobs_rendezvous_server_refuses_the_network(hosts, tmp_path, flags):
    probe = tmp_path / "probe.py"
    probe.write_text(RENDEZVOUS_PROBE)
    command = ["ip", "netns", "exec", hosts[0].namespace, sys.executable, "-m", "hvdtrain.cli", "run", *flags,
               str(probe), hosts[0].address]
    env = {**os.environ, **QUIET_ENV, "HOROVOD_GLOO_TIMEOUT_SECONDS": "30"}
    proc = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=REPO, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "RENDEZVOUS 127.0.0.1 loopback=open network=refused" in proc.stdout, proc.stdout[-3000:]
