"""``hvdtrain`` command line: every bad input gives one clear message and exit status 2."""
from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from hvdtrain.cli import main
from tests.launcher.helpers import STALL_SHUTDOWN


@pytest.fixture
def project(tmp_path, monkeypatch):
    (tmp_path / "train.py").write_text("print('training')\n")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def run_cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def dry_run_argv(capsys, *argv) -> list[str]:
    code, out, err = run_cli(capsys, "run", "--dry-run", *argv)
    assert code == 0, err
    return shlex.split(out)


def test_unknown_script(project, capsys):
    code, _, err = run_cli(capsys, "run", "-np", "2", "missing.py")
    assert code == 2
    assert err.startswith("hvdtrain run: error: training script 'missing.py' not found")


def test_np_larger_than_the_slots_of_hosts(project, capsys):
    code, _, err = run_cli(capsys, "run", "-np", "5", "-H", "node1:2,node2:2", "train.py")
    assert code == 2
    assert "-np 5 is more than the 4 slots of the hosts (node1:2,node2:2)" in err


def test_hostfile_line_that_does_not_parse(project, capsys):
    (project / "hosts").write_text("node1 slots=2\nnode2 slots:2\n")
    code, _, err = run_cli(capsys, "run", "--hostfile", "hosts", "train.py")
    assert code == 2
    assert "hostfile hosts line 2: 'node2 slots:2'" in err
    assert "expected `host slots=N` or `host:N`" in err


def test_unknown_config_key(project, capsys):
    (project / "run.yaml").write_text("np: 2\nhostsfile: hosts\n")
    code, _, err = run_cli(capsys, "run", "--config", "run.yaml", "train.py")
    assert code == 2
    assert "config file run.yaml: unknown key 'hostsfile' (did you mean 'hostfile'?); valid keys are: np," in err


def test_bad_yaml(project, capsys):
    (project / "run.yaml").write_text("np: 2\n  hosts: [a\n")
    code, _, err = run_cli(capsys, "run", "--config", "run.yaml", "train.py")
    assert code == 2
    assert "config file run.yaml is not valid YAML" in err


def test_bad_option_value_and_conflicting_flags(project, capsys):
    code, _, err = run_cli(capsys, "run", "-np", "two", "train.py")
    assert (code, err.strip()) == (2, "hvdtrain run: error: command line: np must be an integer >= 1, got 'two'")
    code, _, err = run_cli(capsys, "run", "--gloo", "--mpi", "-np", "2", "train.py")
    assert code == 2 and "not allowed with argument" in err


def test_config_then_command_line(project, capsys):
    (project / "run.yaml").write_text("np: 4\ncontroller: gloo\nfusion_threshold_mb: 16\nenv: [A=1]\n")
    argv = dry_run_argv(capsys, "--config", "run.yaml", "-np", "2", "-x", "B=2", "train.py", "--lr", "0.1")
    assert argv[0] == "A=1" and argv[1] == "B=2"
    assert argv[2].endswith("horovodrun")
    assert argv[3:11] == ["-np", "2", "--gloo", "--fusion-threshold-mb", "16", *STALL_SHUTDOWN, sys.executable]
    assert argv[11:] == ["train.py", "--lr", "0.1"]


def test_options_after_the_script_belong_to_the_script(project, capsys):
    argv = dry_run_argv(capsys, "-np", "2", "--mpi", "train.py", "-np", "7", "--gloo")
    assert argv[-4:] == ["train.py", "-np", "7", "--gloo"]
    assert argv[argv.index("-np") + 1] == "2"


def test_network_interfaces_comma_separated_or_repeated(project, capsys):
    argv = dry_run_argv(capsys, "-np", "2", "--gloo", "--network-interface", "eth0,eth1", "--network-interface",
                        "ib0", "train.py")
    assert [argv[i + 1] for i, arg in enumerate(argv) if arg == "--network-interface"] == ["eth0", "eth1", "ib0"]


def test_doctor_rejects_unknown_requirement(capsys):
    code, _, err = run_cli(capsys, "doctor", "--require", "torch,cuda")
    assert code == 2
    assert "unknown name(s) cuda; choose from torch, tensorflow, mpi, gloo, nccl" in err


def test_new_creates_a_project_and_refuses_bad_names(tmp_path, capsys):
    code, out, err = run_cli(capsys, "new", "vision-team", "--framework", "pytorch", "--directory",
                             str(tmp_path / "vt"))
    assert code == 0, err
    assert (tmp_path / "vt" / "train.py").is_file() and (tmp_path / "vt" / "run.yaml").is_file()
    assert "cd " in out
    code, _, err = run_cli(capsys, "new", "Vision Team")
    assert code == 2 and "invalid project name 'Vision Team'" in err


def test_new_sizes_the_slurm_script_for_the_cluster_shape(tmp_path, capsys):
    code, out, err = run_cli(capsys, "new", "gpu-team", "--nodes", "2", "--gpus-per-node", "4", "--directory",
                             str(tmp_path / "g"))
    assert code == 0, err
    assert "for 2 nodes x 4 GPUs, one worker per GPU (8 workers)" in out
    sbatch = (tmp_path / "g" / "slurm" / "train.sbatch").read_text()
    for line in ("#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=4", "#SBATCH --gpus-per-node=4",
                 "#SBATCH --requeue", "exec hvdtrain run --config run.yaml train.py --resume \"$@\""):
        assert line in sbatch.splitlines(), line
    code, _, err = run_cli(capsys, "new", "cpu-team", "--gpus-per-node", "0", "--workers-per-node", "3",
                           "--directory", str(tmp_path / "c"))
    assert code == 0, err
    sbatch = (tmp_path / "c" / "slurm" / "train.sbatch").read_text()
    assert "#SBATCH --ntasks-per-node=3" in sbatch and "#SBATCH --gpus" not in sbatch


@pytest.mark.parametrize("args, message", [
    (["--nodes", "0"], "--nodes must be at least 1, got 0"),
    (["--gpus-per-node", "-1"], "--gpus-per-node must be 0 (CPU cluster) or more, got -1"),
    (["--gpus-per-node", "2", "--workers-per-node", "4"],
     "--workers-per-node 4 with --gpus-per-node 2: Horovod runs one worker per GPU; drop --workers-per-node"),
])
def test_new_rejects_impossible_cluster_shapes(tmp_path, capsys, args, message):
    code, _, err = run_cli(capsys, "new", "team", "--directory", str(tmp_path / "t"), *args)
    assert code == 2 and message in err
    assert not (tmp_path / "t").exists()


def test_help_and_missing_subcommand(capsys):
    assert main(["--help"]) == 0
    assert "run" in capsys.readouterr().out
    assert main([]) == 2


def test_console_script_is_installed():
    script = Path(sys.executable).parent / "hvdtrain"
    assert script.exists(), "the `hvdtrain` command is missing; run `make setup` (pip install -e .)"
    proc = subprocess.run([str(script), "--version"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.startswith("hvdtrain ")
