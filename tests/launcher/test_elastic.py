"""``hvdtrain run --elastic``: the horovodrun command, its worker counts, and the host discovery scripts."""
from __future__ import annotations

import os
import shlex
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from hvdtrain.cli import main
from hvdtrain.launcher.allocation import Allocation
from hvdtrain.launcher.command import build_plan
from hvdtrain.launcher.config import RunOptions, coerce, load_config, merge
from hvdtrain.launcher.elastic import local_slot_hosts
from hvdtrain.launcher.errors import LaunchError
from hvdtrain.launcher.hosts import Host
from hvdtrain.launcher.machine import Machine
from hvdtrain.launcher.plan import GeneratedScript, LaunchPlan
from hvdtrain.launcher.run import run_job, written
from tests.launcher.helpers import STALL_SHUTDOWN

PY, HVDRUN, MPIRUN = "/venv/bin/python", "/venv/bin/horovodrun", "/usr/bin/mpirun"
AGENT = [sys.executable, "-m", "hvdtrain.launcher.agent", sys.executable]  # every worker runs under its agent
CPU_BOX = Machine(python=sys.executable, horovodrun=HVDRUN, mpirun=MPIRUN, cpu_count=2, is_root=False, environ={})
GPU_BOX = Machine(python=PY, horovodrun=HVDRUN, mpirun=MPIRUN, cpu_count=16, is_root=False, environ={},
                  has_gpu=True, gpus=4)
COOLDOWN = ["--blacklist-cooldown-range", "10", "100"]


@pytest.fixture
def cwd(tmp_path):
    (tmp_path / "train.py").write_text("print('hi')\n")
    return tmp_path


def plan(cwd, machine=CPU_BOX, **options):
    return build_plan(RunOptions(elastic=True, **options), "train.py", ["--lr", "1"], machine, cwd=cwd)


def discover(script: GeneratedScript) -> subprocess.CompletedProcess:
    """Run the discovery script as horovodrun does: written to its place, executed without arguments."""
    with written(script):
        return subprocess.run([script.path], capture_output=True, text=True, timeout=60)


def flag_values(argv: list[str], flag: str, count: int = 1) -> list[str]:
    index = argv.index(flag)
    return argv[index + 1:index + 1 + count]


def test_local_slot_hosts_are_distinct_names_of_this_machine():
    assert local_slot_hosts(3) == ["127.0.0.1", "127.0.0.01", "127.0.0.001"]
    names = local_slot_hosts(300)  # past the 16 names of the last octet and the 256 of the last two
    assert len(set(names)) == 300
    assert {socket.gethostbyname(name) for name in names} == {"127.0.0.1"}
    assert max(len(name) for name in local_slot_hosts(4096)) <= 3 + 3 * 17
    with pytest.raises(ValueError, match="4097 local slots is more than the 4096 names"):
        local_slot_hosts(4097)


def test_default_runs_each_local_slot_as_a_host_of_its_own(cwd):
    result = plan(cwd)
    script = result.discovery_script.path
    assert (result.launcher, result.controller, result.np) == ("horovodrun", "gloo", 2)
    assert result.argv == [HVDRUN, "-np", "2", "--min-np", "1", "--max-np", "2", "--host-discovery-script", script,
                           *COOLDOWN, "--gloo", *STALL_SHUTDOWN, "--network-interface", "lo", *AGENT, "train.py",
                           "--lr", "1"]
    assert result.env == {"HVDTRAIN_LOCAL_SLOT_HOSTS": "127.0.0.1,127.0.0.01"}
    assert Path(script).name == "discover-hosts" and Path(script).parent.name.startswith("hvdtrain-elastic-")
    found = discover(result.discovery_script)
    assert (found.returncode, found.stdout) == (0, "127.0.0.1:1\n127.0.0.01:1\n"), found.stderr
    assert not Path(script).parent.exists()


def test_local_slots_default_to_the_gpus_and_max_np_sets_their_number(cwd):
    assert plan(cwd, GPU_BOX).env["HVDTRAIN_LOCAL_SLOT_HOSTS"].count(",") == 3
    result = plan(cwd, GPU_BOX, np=2, max_np=6, min_np=2)
    assert result.argv[1:7] == ["-np", "2", "--min-np", "2", "--max-np", "6"]
    assert result.env["HVDTRAIN_LOCAL_SLOT_HOSTS"] == ",".join(local_slot_hosts(6))
    assert "-np 6 is more than the 4 GPUs of this machine" in result.warnings[0]
    assert plan(cwd, max_np=3).argv[1:7] == ["-np", "3", "--min-np", "1", "--max-np", "3"]
    assert plan(cwd, np=3).argv[1:7] == ["-np", "3", "--min-np", "1", "--max-np", "3"]


def test_hostfile_is_read_again_on_every_call(cwd, tmp_path):
    hostfile = tmp_path / "hosts"
    hostfile.write_text("node1 slots=2  # the first\nnode2:2\n")
    result = plan(cwd, hostfile=str(hostfile), max_np=8)
    assert result.argv[1:7] == ["-np", "4", "--min-np", "1", "--max-np", "8"]
    assert "-H" not in result.argv and "HVDTRAIN_LOCAL_SLOT_HOSTS" not in result.env
    assert result.hosts == [Host("node1", 2), Host("node2", 2)]
    script = result.discovery_script
    assert str(hostfile) in script.text
    with written(script):
        assert subprocess.run([script.path], capture_output=True, text=True).stdout == "node1:2\nnode2:2\n"
        hostfile.write_text("node1 slots=2\nnode3\n")
        assert subprocess.run([script.path], capture_output=True, text=True).stdout == "node1:2\nnode3:1\n"
        hostfile.write_text("node1 slots=two\n")
        broken = subprocess.run([script.path], capture_output=True, text=True)
    assert broken.returncode == 1 and broken.stdout == ""
    assert f"hvdtrain host discovery: hostfile {hostfile} line 1: 'node1 slots=two'" in broken.stderr


def test_hosts_of_the_command_line_are_a_fixed_list(cwd):
    result = plan(cwd, hosts="node1:2,node2:1", np=2, min_np=2)
    assert result.argv[1:7] == ["-np", "2", "--min-np", "2", "--max-np", "2"]
    assert discover(result.discovery_script).stdout == "node1:2\nnode2:1\n"
    assert not result.warnings
    assert plan(cwd, hosts="localhost:4").warnings == (
        "localhost runs 4 workers as one host: Horovod's elastic driver drops a whole host when one of its workers "
        "fails, so one failure stops all 4; leave out -H/--hostfile to run this machine's slots as hosts of their own",)


def test_slurm_allocation_hosts_are_the_list(cwd):
    allocation = Allocation("7", [Host("n1", 2), Host("n2", 2)], 4)
    machine = Machine(PY, HVDRUN, MPIRUN, 2, False, {"SLURM_JOB_ID": "7"}, allocation=allocation)
    result = plan(cwd, machine)
    assert result.np == 4 and result.allocation == allocation
    assert discover(result.discovery_script).stdout == "n1:2\nn2:2\n"


def test_own_discovery_script_is_passed_through(cwd):
    script = cwd / "my hosts.sh"
    script.write_text("#!/bin/sh\necho node1:4\n")
    script.chmod(0o755)
    result = plan(cwd, host_discovery_script="my hosts.sh", np=4, slots_per_host=2, elastic_timeout=60,
                  reset_limit=3, blacklist_cooldown_range=(5, 50), gloo_timeout_seconds=20,
                  stall_check_warning_time_seconds=30)
    assert result.discovery_script is None and result.env == {}
    assert result.argv == [HVDRUN, "-np", "4", "--min-np", "1", "--max-np", "4", "--host-discovery-script",
                           shlex.quote(str(script)), "--slots-per-host", "2", "--blacklist-cooldown-range", "5", "50",
                           "--elastic-timeout", "60", "--reset-limit", "3", "--gloo",
                           "--stall-check-warning-time-seconds", "30", *STALL_SHUTDOWN, "--gloo-timeout-seconds", "20",
                           *AGENT, "train.py", "--lr", "1"]
    assert flag_values(plan(cwd, host_discovery_script=str(script), max_np=3).argv, "-np") == ["3"]


def test_config_file_keys(cwd):
    (cwd / "discover.sh").write_text("#!/bin/sh\necho a:1\n")
    (cwd / "discover.sh").chmod(0o755)
    (cwd / "run.yaml").write_text("elastic: true\nmin_np: 2\nmax_np: 4\nnp: 3\nhost_discovery_script: discover.sh\n"
                                  "slots_per_host: 1\nelastic_timeout: 30\nreset_limit: 0\n"
                                  "blacklist_cooldown_range: [20, 200]\ngloo_timeout_seconds: 15\n")
    options = merge(load_config(cwd / "run.yaml"), {})
    assert options.blacklist_cooldown_range == (20, 200) and options.host_discovery_script == str(cwd / "discover.sh")
    argv = build_plan(options, "train.py", [], CPU_BOX, cwd=cwd).argv
    assert argv[1:9] == ["-np", "3", "--min-np", "2", "--max-np", "4", "--host-discovery-script",
                         str(cwd / "discover.sh")]
    assert flag_values(argv, "--blacklist-cooldown-range", 2) == ["20", "200"]
    assert flag_values(argv, "--reset-limit") == ["0"] and flag_values(argv, "--gloo-timeout-seconds") == ["15"]


@pytest.mark.parametrize(("options", "expected"), [
    ({"min_np": 3, "np": 2}, "--min-np 3 is more than -np 2: the job starts with -np workers and goes on while at "
                             "least --min-np are left; lower --min-np to at most 2 or raise -np"),
    ({"np": 4, "max_np": 3}, "-np 4 is more than --max-np 3: the job starts with -np workers and grows to at most "
                             "--max-np; raise --max-np to at least 4 or lower -np"),
    ({"np": 5, "hosts": "a:2,b:2"}, "-np 5 is more than the 4 slots of the hosts (a:2,b:2)"),
    ({"controller": "mpi"}, "elastic training runs on Horovod's Gloo controller only; drop --mpi"),
    ({"launcher": "mpirun"}, "elastic training is started by horovodrun (its elastic driver restarts workers and runs "
                             "Gloo's rendezvous), not mpirun; drop --launcher mpirun"),
    ({"mpi_args": ["-v"]}, "mpi_args only apply to the MPI controller, and elastic training runs on Gloo"),
    ({"slots_per_host": 2}, "--slots-per-host only applies to --host-discovery-script"),
    ({"host_discovery_script": "nope.sh"}, "--host-discovery-script nope.sh: no such file (looked in"),
    ({"host_discovery_script": "train.py"}, "--host-discovery-script train.py is not executable; run `chmod +x "
                                            "train.py`"),
])
def test_impossible_elastic_options(cwd, options, expected):
    with pytest.raises(LaunchError) as err:
        plan(cwd, **options)
    assert expected in str(err.value)


def test_discovery_script_needs_np_and_no_other_hosts(cwd):
    (cwd / "d.sh").write_text("#!/bin/sh\n")
    (cwd / "d.sh").chmod(0o755)
    with pytest.raises(LaunchError, match=r"with --host-discovery-script give -np N .* or --max-np N"):
        plan(cwd, host_discovery_script="d.sh")
    with pytest.raises(LaunchError, match="give either --host-discovery-script or -H/--hosts/--hostfile, not both"):
        plan(cwd, host_discovery_script="d.sh", hosts="a:1", np=1)


def test_scheduler_hosts_cannot_be_read_for_elastic(cwd):
    machine = Machine(PY, HVDRUN, MPIRUN, 2, False, {"PBS_JOBID": "1"})
    with pytest.raises(LaunchError, match=r"cannot read the hosts of the scheduler's allocation \(PBS_JOBID is set"):
        plan(cwd, machine)
    assert plan(cwd, machine, hosts="n1:2").np == 2


def test_elastic_options_need_elastic(cwd):
    with pytest.raises(LaunchError) as err:
        build_plan(RunOptions(np=2, max_np=4, blacklist_cooldown_range=(1, 2)), "train.py", [], CPU_BOX, cwd=cwd)
    assert str(err.value) == ("--max-np, --blacklist-cooldown-range only apply to elastic training; add --elastic (or "
                              "`elastic: true` in the config file), or drop --max-np and --blacklist-cooldown-range")
    assert "--gloo-timeout-seconds" in build_plan(RunOptions(np=2, controller="gloo", gloo_timeout_seconds=9),
                                                  "train.py", [], CPU_BOX, cwd=cwd).argv


@pytest.mark.parametrize("value", ["0 100", "10 4000", "100 10", [10], "ten 100"])
def test_cooldown_range_within_horovods_limits(value):
    with pytest.raises(LaunchError, match=r"blacklist_cooldown_range must be two whole numbers of seconds LOW HIGH "
                                          r"with 1 <= LOW <= HIGH <= 3600 \(Horovod's limits\)"):
        coerce("blacklist_cooldown_range", value, "command line")
    assert coerce("blacklist_cooldown_range", ["1", "3600"], "command line") == (1, 3600)


def test_the_script_is_written_for_the_run_and_removed_after(tmp_path):
    path = tmp_path / "hvdtrain-elastic-x" / "discover-hosts"
    check = f"import os, sys; sys.exit(0 if os.access({str(path)!r}, os.X_OK) else 5)"
    job = LaunchPlan([sys.executable, "-c", check], {}, "horovodrun", "gloo", 1, None, False,
                     discovery_script=GeneratedScript(str(path), "#!/bin/sh\necho a:1\n"))
    assert run_job(job) == 0
    assert not path.parent.exists()


def test_dry_run_shows_the_command_and_the_script(cwd, capsys, monkeypatch):
    monkeypatch.chdir(cwd)
    assert main(["run", "--dry-run", "--elastic", "-np", "2", "--max-np", "3", "train.py"]) == 0
    out = capsys.readouterr().out
    argv = shlex.split(out, comments=True)
    assert argv[0] == f"HVDTRAIN_LOCAL_SLOT_HOSTS={','.join(local_slot_hosts(3))}"
    script = flag_values(argv, "--host-discovery-script")[0]
    assert f"# {script}, written when the job starts and removed when it ends:" in out
    assert "#   printf '%s\\n' 127.0.0.1:1 127.0.0.01:1 127.0.0.001:1" in out
    assert not os.path.exists(script)


def test_written_directory_is_private(tmp_path):
    script = GeneratedScript(str(tmp_path / "d" / "s"), "#!/bin/sh\n")
    with written(script):
        assert stat.S_IMODE(os.stat(tmp_path / "d").st_mode) == 0o700
        assert os.access(script.path, os.X_OK)
    assert not (tmp_path / "d").exists()
