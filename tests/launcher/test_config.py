"""The YAML config file of ``hvdtrain run`` and how it merges with the command line."""
from __future__ import annotations

import re

import pytest

from hvdtrain.launcher.config import CONFIG_KEYS, RunOptions, coerce, load_config, merge, merge_env
from hvdtrain.launcher.errors import LaunchError


def write(tmp_path, text, name="run.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_every_key_loads_with_its_type(tmp_path):
    config = load_config(write(tmp_path, """
np: 4
hosts: [node1:2, node2:2]
controller: MPI
launcher: horovodrun
fusion_threshold_mb: 32
cycle_time_ms: 2.5
cache_capacity: 2048
timeline_filename: timeline.json
timeline_mark_cycles: true
autotune: true
autotune_log_file: /abs/autotune.csv
stall_check_warning_time_seconds: 30
stall_check_shutdown_time_seconds: 120
log_level: debug
network_interface: eth0,eth1
ssh_port: 2222
ssh_identity_file: ~/.ssh/id_cluster
env: {NCCL_DEBUG: WARN, OMP_NUM_THREADS: 4}
mpi_args: --mca btl self,tcp
"""))
    assert config["np"] == 4
    assert config["hosts"] == "node1:2,node2:2"
    assert config["controller"] == "mpi"
    assert config["cycle_time_ms"] == 2.5
    assert config["log_level"] == "DEBUG"
    assert config["network_interface"] == ["eth0", "eth1"]
    assert config["env"] == ["NCCL_DEBUG=WARN", "OMP_NUM_THREADS=4"]
    assert config["mpi_args"] == ["--mca", "btl", "self,tcp"]
    # Relative paths are relative to the config file; absolute and ~ paths stay.
    assert config["timeline_filename"] == str(tmp_path / "timeline.json")
    assert config["autotune_log_file"] == "/abs/autotune.csv"
    assert config["ssh_identity_file"] == "~/.ssh/id_cluster"
    merge(config, {})  # every loaded value fits RunOptions


def test_config_keys_are_the_long_option_names():
    assert {"np", "hosts", "hostfile", "controller", "fusion_threshold_mb", "cycle_time_ms", "timeline_filename",
            "autotune", "no_stall_check", "stall_check_warning_time_seconds", "stall_check_shutdown_time_seconds",
            "log_level", "network_interface", "ssh_port", "env"} <= set(CONFIG_KEYS)


def test_unknown_key_suggests_the_close_one_and_lists_all(tmp_path):
    path = write(tmp_path, "np: 2\nfusion_treshold_mb: 64\n")
    with pytest.raises(LaunchError) as err:
        load_config(path)
    message = str(err.value)
    assert f"config file {path}: unknown key 'fusion_treshold_mb' (did you mean 'fusion_threshold_mb'?)" in message
    assert "valid keys are: np, hosts, hostfile, controller" in message


def test_dashed_key_and_controller_flags_get_hints(tmp_path):
    with pytest.raises(LaunchError, match=r"did you mean 'cycle_time_ms'"):
        load_config(write(tmp_path, "cycle-time-ms: 5\n"))
    with pytest.raises(LaunchError, match=r"unknown key 'gloo' \(write `controller: gloo`\)"):
        load_config(write(tmp_path, "gloo: true\n"))


def test_bad_yaml_is_named(tmp_path):
    path = write(tmp_path, "np: [2\nhosts: a:1\n")
    with pytest.raises(LaunchError, match=rf"config file {path} is not valid YAML: "):
        load_config(path)


@pytest.mark.parametrize(("text", "expected"), [
    ("- np\n- 2\n", "must be a mapping of option names to values"),
    ("np: two\n", "np must be an integer >= 1, got 'two'"),
    ("np: 0\n", "np must be an integer >= 1, got 0"),
    ("autotune: yes please\n", "autotune must be true or false"),
    ("controller: nccl\n", "controller must be one of mpi, gloo"),
    ("cycle_time_ms: -1\n", "cycle_time_ms must be a number > 0"),
    ("env: [1BAD]\n", "'1BAD' is not NAME or NAME=VALUE"),
])
def test_bad_values_name_key_and_expectation(tmp_path, text, expected):
    with pytest.raises(LaunchError, match="config file .*" + re.escape(expected)):
        load_config(write(tmp_path, text))


def test_missing_and_empty_config(tmp_path):
    with pytest.raises(LaunchError, match="does not exist; check the path given to --config"):
        load_config(tmp_path / "missing.yaml")
    assert load_config(write(tmp_path, "# only a comment\n")) == {}


def test_command_line_wins_and_env_lists_combine():
    config = {"np": 4, "controller": "gloo", "cycle_time_ms": 5.0, "autotune": True,
              "env": ["A=1", "B=2"], "network_interface": ["eth0"]}
    cli = {"np": 2, "env": ["B=3", "C"], "network_interface": ["ib0"]}
    options = merge(config, cli)
    assert options.np == 2
    assert options.controller == "gloo"
    assert options.cycle_time_ms == 5.0
    assert options.autotune is True
    assert options.env == ["A=1", "B=3", "C"]
    assert options.network_interface == ["ib0"]
    assert merge({}, {}) == RunOptions()


def test_command_line_hosts_replace_config_hostfile_and_vice_versa():
    assert merge({"hostfile": "/h"}, {"hosts": "a:1"}).hostfile is None
    assert merge({"hosts": "a:1"}, {"hostfile": "/h"}).hosts is None
    with pytest.raises(LaunchError, match="sets both `hosts` and `hostfile`"):
        merge({"hosts": "a:1", "hostfile": "/h"}, {})


def test_coerce_from_command_line_strings():
    assert coerce("np", "3", "command line") == 3
    assert coerce("fusion_threshold_mb", "0", "command line") == 0
    with pytest.raises(LaunchError, match="command line: ssh_port must be an integer >= 1"):
        coerce("ssh_port", "22x", "command line")


def test_merge_env_keeps_the_last_value_per_name():
    assert merge_env(["A=1", "B"], ["A=2"]) == ["B", "A=2"]
