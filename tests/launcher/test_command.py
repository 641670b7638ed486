"""The exact launcher argv for given options on a described machine (nothing is launched here)."""
from __future__ import annotations

import shlex
import sys
from pathlib import Path

import pytest

from hvdtrain.launcher.allocation import Allocation
from hvdtrain.launcher.command import build_plan
from hvdtrain.launcher.config import RunOptions
from hvdtrain.launcher.errors import LaunchError
from hvdtrain.launcher.hosts import Host
from hvdtrain.launcher.machine import Machine, detect_machine, find_tool, local_gpus
from hvdtrain.launcher.network import JobNetwork, job_network
from hvdtrain.launcher.resolve import needs_yield
from tests.launcher.helpers import STALL_SHUTDOWN

PY, HVDRUN, MPIRUN = "/venv/bin/python", "/venv/bin/horovodrun", "/usr/bin/mpirun"
ROOT_BOX = Machine(python=PY, horovodrun=HVDRUN, mpirun=MPIRUN, cpu_count=2, is_root=True,
                   environ={"PATH": "/venv/bin:/usr/bin", "HOME": "/root"})


@pytest.fixture
def script(tmp_path):
    (tmp_path / "train.py").write_text("print('hi')\n")
    return tmp_path


def plan(cwd, machine=ROOT_BOX, args=("--epochs", "3"), **options):
    return build_plan(RunOptions(**options), "train.py", list(args), machine, cwd=cwd)


def test_default_on_this_kind_of_machine_is_mpirun_with_safe_fast_flags(script):
    result = plan(script, np=2)
    assert (result.launcher, result.controller, result.yield_when_idle) == ("mpirun", "mpi", True)
    assert result.argv == [MPIRUN, "-np", "2", "-H", "localhost:2", "--bind-to", "none", "--map-by", "slot",
                           "--allow-run-as-root", "--mca", "mpi_yield_when_idle", "1", "-x", "PATH",
                           "-x", "HOROVOD_STALL_SHUTDOWN_TIME_SECONDS=900", PY, "train.py", "--epochs", "3"]
    assert result.env == {}


def test_without_mpirun_the_default_is_horovodrun_gloo(script):
    machine = Machine(python=PY, horovodrun=HVDRUN, mpirun=None, cpu_count=2, is_root=False, environ={})
    result = plan(script, machine, np=2)
    assert result.argv == [HVDRUN, "-np", "2", "--gloo", *STALL_SHUTDOWN, PY, "train.py", "--epochs", "3"]


def test_not_root_with_gpus_and_spare_cores_drops_root_and_yield_flags(script):
    machine = Machine(python=PY, horovodrun=HVDRUN, mpirun=MPIRUN, cpu_count=8, is_root=False, environ={},
                      has_gpu=True)
    argv = plan(script, machine, args=(), np=2).argv
    assert "--allow-run-as-root" not in argv
    assert "mpi_yield_when_idle" not in argv
    assert argv[-2:] == [PY, "train.py"]


def test_cpu_workers_always_yield_even_with_spare_cores(script):
    machine = Machine(python=PY, horovodrun=HVDRUN, mpirun=MPIRUN, cpu_count=8, is_root=False, environ={})
    assert "mpi_yield_when_idle" in plan(script, machine, args=(), np=2).argv


def test_horovod_tuning_as_horovodrun_flags(script):
    result = plan(script, args=(), np=2, controller="gloo", fusion_threshold_mb=32, cycle_time_ms=2.5,
                  timeline_filename="tl.json", timeline_mark_cycles=True, autotune=True,
                  autotune_log_file="at.csv", stall_check_warning_time_seconds=30,
                  stall_check_shutdown_time_seconds=90, log_level="DEBUG", network_interface=["eth0", "eth1"],
                  ssh_port=2222, ssh_identity_file="/k", env=["FOO=bar baz", "PATH"])
    assert result.argv == [
        HVDRUN, "-np", "2", "--gloo", "--fusion-threshold-mb", "32", "--cycle-time-ms", "2.5",
        "--timeline-filename", "tl.json", "--timeline-mark-cycles", "--autotune", "--autotune-log-file", "at.csv",
        "--stall-check-warning-time-seconds", "30", "--stall-check-shutdown-time-seconds", "90",
        "--log-level", "DEBUG", "--network-interface", "eth0", "--network-interface", "eth1",
        "-p", "2222", "-i", "/k", PY, "train.py"]
    assert result.env == {"FOO": "bar baz"}
    assert result.shell().startswith(f"FOO='bar baz' {HVDRUN} -np 2 --gloo")


def test_horovod_tuning_as_environment_for_mpirun(script):
    argv = plan(script, args=(), np=2, fusion_threshold_mb=32, cycle_time_ms=5, no_stall_check=True,
                log_level="INFO", cache_capacity=0).argv
    tail = argv[argv.index("PATH") + 1:]
    assert tail == ["-x", "HOROVOD_FUSION_THRESHOLD=33554432", "-x", "HOROVOD_CYCLE_TIME=5",
                    "-x", "HOROVOD_CACHE_CAPACITY=0", "-x", "HOROVOD_STALL_CHECK_DISABLE=1",
                    "-x", "HOROVOD_LOG_LEVEL=INFO", PY, "train.py"]


def test_horovodrun_with_mpi_controller_gets_yield_through_mpi_args(script):
    argv = plan(script, args=(), np=2, launcher="horovodrun", controller="mpi", mpi_args=["--mca", "btl", "^openib"]
                ).argv
    assert argv == [HVDRUN, "-np", "2", "--mpi", *STALL_SHUTDOWN,
                    "--mpi-args=--mca mpi_yield_when_idle 1 --mca btl '^openib'",
                    PY, "train.py"]


def test_mpirun_exports_needed_variables_and_user_env(script):
    environ = {"PATH": "/bin", "LD_LIBRARY_PATH": "/lib", "PYTHONPATH": "/src", "HOME": "/root",
               "HVDTRAIN_SEED": "1", "NCCL_DEBUG": "WARN", "OMP_NUM_THREADS": "1", "SECRET_TOKEN": "x",
               "HOROVOD_CYCLE_TIME": "9"}
    machine = Machine(python=PY, horovodrun=HVDRUN, mpirun=MPIRUN, cpu_count=4, is_root=False, environ=environ)
    argv = plan(script, machine, args=(), np=2, cycle_time_ms=1, env=["NCCL_DEBUG=INFO", "HOME"]).argv
    exported = [argv[i + 1] for i, arg in enumerate(argv) if arg == "-x"]
    assert exported == ["HVDTRAIN_SEED", "LD_LIBRARY_PATH", "OMP_NUM_THREADS", "PATH", "PYTHONPATH",
                        "NCCL_DEBUG=INFO", "HOME", "HOROVOD_CYCLE_TIME=1",
                        "HOROVOD_STALL_SHUTDOWN_TIME_SECONDS=900"]


def test_hosts_network_and_ssh_for_mpirun(script, tmp_path):
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("node1 slots=2\nnode2:2\n")
    argv = plan(script, args=(), hostfile=str(hostfile), network_interface=["eth0"], ssh_port=2222,
                ssh_identity_file="/k").argv
    assert argv[:5] == [MPIRUN, "-np", "4", "-H", "node1:2,node2:2"]
    assert shlex.join(argv).count("--mca") == 4
    for group in (["--mca", "btl_tcp_if_include", "eth0"], ["--mca", "oob_tcp_if_include", "eth0"],
                  ["-x", "NCCL_SOCKET_IFNAME=eth0"], ["--mca", "plm_rsh_args", "-p 2222 -i /k"]):
        assert shlex.join(group) in shlex.join(argv)


def test_scheduler_allocation_leaves_hosts_to_mpirun(script):
    machine = Machine(python=PY, horovodrun=HVDRUN, mpirun=MPIRUN, cpu_count=2, is_root=False,
                      environ={"PBS_JOBID": "42"})
    assert plan(script, machine, args=()).argv[:3] == [MPIRUN, "--bind-to", "none"]
    assert plan(script, machine, args=(), np=8).argv[:4] == [MPIRUN, "-np", "8", "--bind-to"]


SLURM_JOB = Allocation("42", [Host("node1", 2), Host("node2", 2)], 4)


def slurm_box(allocation=SLURM_JOB):
    return Machine(python=PY, horovodrun=HVDRUN, mpirun=MPIRUN, cpu_count=2, is_root=True,
                   environ={"SLURM_JOB_ID": allocation.job_id}, allocation=allocation)


def test_slurm_allocation_gives_np_and_hosts(script):
    result = plan(script, slurm_box(), args=())
    assert result.argv[:5] == [MPIRUN, "-np", "4", "-H", "node1:2,node2:2"]
    assert "--allow-run-as-root" in result.argv and result.allocation == SLURM_JOB
    assert plan(script, slurm_box(), args=(), np=3).argv[:5] == [MPIRUN, "-np", "3", "-H", "node1:2,node2:2"]
    # Explicit hosts are the user's choice: the allocation's are not used then.
    explicit = plan(script, slurm_box(), args=(), hosts="node1:2")
    assert explicit.argv[:5] == [MPIRUN, "-np", "2", "-H", "node1:2"] and explicit.allocation is None


def test_np_beyond_the_allocation_names_both_numbers_and_the_fix(script):
    with pytest.raises(LaunchError) as err:
        plan(script, slurm_box(), np=6)
    assert str(err.value) == (
        "-np 6 is more than the 4 task(s) of Slurm job 42 (node1:2,node2:2); drop -np (and `np:` from the config "
        "file) to use all 4, lower it, or submit the job with 6 tasks (e.g. `sbatch --ntasks=6`, or more "
        "--nodes/--ntasks-per-node)")


def test_gloo_in_an_allocation_uses_its_hosts_too(script):
    argv = plan(script, slurm_box(Allocation("7", [Host("n1", 1)], 1)), args=(), controller="gloo").argv
    assert argv[:5] == [HVDRUN, "-np", "1", "-H", "n1:1"]


def test_yield_rule():
    # CPU workers: always (their thread pools fill the cores); one worker alone never waits on a peer.
    assert needs_yield(2, None, 2) and needs_yield(2, None, 16) and needs_yield(None, None, 2)
    assert not needs_yield(1, None, 2)
    # GPU workers: only when a host runs as many workers as it has cores.
    hosts = [Host("a", 2), Host("b", 2)]
    assert needs_yield(4, hosts, 2, has_gpu=True) and not needs_yield(4, hosts, 4, has_gpu=True)
    assert not needs_yield(None, None, 2, has_gpu=True)


def test_unknown_script(tmp_path):
    with pytest.raises(LaunchError, match=r"training script 'train.py' not found \(looked in .*\); check the path"):
        plan(tmp_path, np=2)
    (tmp_path / "pkg").mkdir()
    with pytest.raises(LaunchError, match="is a directory"):
        build_plan(RunOptions(np=2), "pkg", [], ROOT_BOX, cwd=tmp_path)


def test_np_larger_than_slots(script, tmp_path):
    with pytest.raises(LaunchError, match=r"-np 5 is more than the 4 slots of the hosts \(a:1,b:3\); lower -np"):
        plan(script, np=5, hosts="a:1,b:3")
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("a slots=1\n")
    with pytest.raises(LaunchError, match="-np 2 is more than the 1 slots"):
        plan(script, np=2, hostfile=str(hostfile))


def test_bad_hostfile_line_is_a_launch_error(script, tmp_path):
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("a slots=1\nb slots=x\n")
    with pytest.raises(LaunchError, match=rf"hostfile {hostfile} line 2: 'b slots=x'.*`host slots=N` or `host:N`"):
        plan(script, np=2, hostfile=str(hostfile))


@pytest.mark.parametrize(("options", "machine", "expected"), [
    ({}, ROOT_BOX, "the number of workers is not set: give -np N"),
    ({"np": 2, "controller": "gloo", "launcher": "mpirun"}, ROOT_BOX, "the Gloo controller needs horovodrun"),
    ({"np": 2, "controller": "mpi"}, Machine(PY, HVDRUN, None, 2, False), "the MPI controller needs `mpirun`"),
    ({"np": 2, "controller": "gloo"}, Machine(PY, None, MPIRUN, 2, False), "`horovodrun` was found neither"),
    ({"np": 2, "env": ["NOT_SET_ANYWHERE"]}, ROOT_BOX, "-x NOT_SET_ANYWHERE: NOT_SET_ANYWHERE is not set"),
    ({"np": 2, "no_stall_check": True, "stall_check_warning_time_seconds": 5}, ROOT_BOX, "--no-stall-check disables"),
    ({"np": 2, "stall_check_shutdown_time_seconds": 30}, ROOT_BOX, "must be greater than the warning time (60 s)"),
    ({"np": 2, "timeline_mark_cycles": True}, ROOT_BOX, "--timeline-mark-cycles needs --timeline-filename"),
    ({"np": 2, "controller": "gloo", "mpi_args": ["-v"]}, ROOT_BOX, "mpi_args only apply to the MPI controller"),
    ({"np": 2, "hosts": "a:1", "hostfile": "/h"}, ROOT_BOX, "either -H/--hosts or --hostfile"),
])
def test_impossible_combinations(script, options, machine, expected):
    with pytest.raises(LaunchError) as err:
        plan(script, machine, **options)
    assert expected in str(err.value)


def test_launchers_are_taken_from_this_python_environment():
    venv_bin = Path(sys.executable).parent
    assert find_tool("horovodrun") == str(venv_bin / "horovodrun"), "run `make setup` to install Horovod"
    machine = detect_machine()
    assert machine.python == sys.executable
    assert machine.mpirun is not None, "mpirun is not on PATH; run `make setup`"


def test_np_defaults_to_the_gpus_of_this_machine_and_more_workers_than_gpus_warn(tmp_path):
    script = tmp_path / "train.py"
    script.write_text("")
    gpu_box = Machine(python=PY, horovodrun=HVDRUN, mpirun=MPIRUN, cpu_count=16, is_root=False, environ={},
                      has_gpu=True, gpus=4)
    plan = build_plan(RunOptions(), str(script), [], gpu_box)
    assert plan.np == 4 and not plan.warnings
    crowded = build_plan(RunOptions(np=6), str(script), [], gpu_box)
    assert crowded.warnings == ("-np 6 is more than the 4 GPUs of this machine: PyTorch workers take one GPU each "
                                "and stop with an error; use -np 4 (or leave -np out: it defaults to the GPU count)",)
    assert local_gpus(tmp_path) == 0
    for name in ("nvidia0", "nvidia1", "nvidiactl", "nvidia-uvm"):
        (tmp_path / name).touch()
    assert local_gpus(tmp_path) == 2


# Executing a plan: where the job listens (hvdtrain.launcher.network) and what that adds to the command.

def test_mpirun_exports_the_report_variables(script):
    executed = plan(script, np=2).for_execution(JobNetwork("127.0.0.1", None), PY)
    assert executed.argv[:5] == [MPIRUN, "-x", "HVDTRAIN_REPORT_ADDRESS", "-x", "HVDTRAIN_REPORT_TOKEN"]


def test_gloo_runs_horovodrun_with_its_rendezvous_bound_to_the_jobs_address(script):
    executed = plan(script, np=2, controller="gloo").for_execution(JobNetwork("127.0.0.1", None), PY)
    assert executed.argv[:5] == [PY, "-m", "hvdtrain.launcher.horovodrun", "-np", "2"]
    assert executed.env["HVDTRAIN_RENDEZVOUS_ADDRESS"] == "127.0.0.1"


def test_a_multi_host_gloo_job_is_told_the_interface_of_its_address(script):
    base = plan(script, controller="gloo", hosts="node1:1,node2:1")
    executed = base.for_execution(JobNetwork("10.1.2.3", "ib0"), PY)
    assert executed.argv[3:5] == ["--network-interface", "ib0"]
    assert executed.env["HVDTRAIN_RENDEZVOUS_ADDRESS"] == "10.1.2.3"
    given = plan(script, controller="gloo", hosts="node1:1,node2:1", network_interface=["eth1"])
    assert given.for_execution(JobNetwork("10.9.9.9", "eth1"), PY).argv.count("--network-interface") == 1
    several = plan(script, controller="gloo", hosts="node1:1,node2:1", network_interface=["eth1", "eth2"])
    assert several.for_execution(JobNetwork("10.9.9.9", "eth1"), PY) == several  # no one address to bind


def test_the_jobs_address_is_loopback_on_one_machine_and_a_given_interface_must_exist():
    assert job_network(None, []) == JobNetwork("127.0.0.1", None)
    assert job_network([Host("localhost", 2)], []) == JobNetwork("127.0.0.1", None)
    assert job_network(None, ["lo"]) == JobNetwork("127.0.0.1", "lo")
    with pytest.raises(LaunchError, match="no interface 'nope0' with an IPv4 address"):
        job_network([Host("node1", 1)], ["nope0"])
