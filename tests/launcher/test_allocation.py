"""Reading a Slurm allocation from the variables Slurm sets in a job (node lists: tests/slurm/, real scontrol)."""
from __future__ import annotations

import pytest

from hvdtrain.launcher.allocation import expand_tasks_per_node, slurm_allocation
from hvdtrain.launcher.errors import LaunchError
from hvdtrain.launcher.hosts import Host


def listed(nodelist: str) -> list[str]:
    """Node lists written out in full (no brackets), so no scontrol is needed."""
    return nodelist.split(",")


def test_tasks_per_node_in_slurms_compressed_form():
    assert expand_tasks_per_node("2") == [2]
    assert expand_tasks_per_node("4(x3),2,1(x2)") == [4, 4, 4, 2, 1, 1]
    with pytest.raises(LaunchError, match=r"SLURM_TASKS_PER_NODE='2x3' is not Slurm's `N` / `N\(xR\)` list"):
        expand_tasks_per_node("2x3")


def test_outside_slurm_there_is_no_allocation():
    assert slurm_allocation({"PATH": "/usr/bin"}, listed) is None


def test_allocation_pairs_nodes_with_their_tasks():
    environ = {"SLURM_JOB_ID": "9", "SLURM_JOB_NODELIST": "a,b", "SLURM_TASKS_PER_NODE": "2(x2)",
               "SLURM_NTASKS": "4"}
    allocation = slurm_allocation(environ, listed)
    assert (allocation.hosts, allocation.ntasks) == ([Host("a", 2), Host("b", 2)], 4)
    # Without SLURM_NTASKS (`sbatch -N 2` asks for no task count), every task slot is a worker.
    del environ["SLURM_NTASKS"]
    assert slurm_allocation(environ, listed).ntasks == 4


@pytest.mark.parametrize("environ, message", [
    ({"SLURM_JOB_ID": "9"}, "SLURM_JOB_ID=9 is set but SLURM_JOB_NODELIST and SLURM_TASKS_PER_NODE are not"),
    ({"SLURM_JOB_ID": "9", "SLURM_JOB_NODELIST": "a,b", "SLURM_TASKS_PER_NODE": "2"},
     "SLURM_JOB_NODELIST names 2 node(s) but SLURM_TASKS_PER_NODE='2' gives 1"),
    ({"SLURM_JOB_ID": "9", "SLURM_JOB_NODELIST": "a", "SLURM_TASKS_PER_NODE": "2", "SLURM_NTASKS": "3"},
     "SLURM_NTASKS='3' does not fit its 2 task slot(s)"),
])
def test_inconsistent_slurm_variables_are_named(environ, message):
    with pytest.raises(LaunchError) as err:
        slurm_allocation(environ, listed)
    assert message in str(err.value)


def test_missing_scontrol_is_named(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(LaunchError, match="`scontrol` is not on PATH"):
        slurm_allocation({"SLURM_JOB_ID": "9", "SLURM_JOB_NODELIST": "a", "SLURM_TASKS_PER_NODE": "1"})
