"""A Slurm allocation as ``hvdtrain run`` sees it: the job's nodes and how many tasks each may run.

Inside a batch script (``SLURM_JOB_ID`` set), ``hvdtrain run train.py`` takes the number of
workers and the hosts from here, so the script needs no numbers:

* ``SLURM_JOB_NODELIST`` (``node[01-03],gpu7``), expanded by ``scontrol show hostnames``;
* ``SLURM_TASKS_PER_NODE`` (``4(x2),2``: 4 tasks on each of the first two nodes, 2 on the third);
* ``SLURM_NTASKS``, the number of workers (set when the job asked for tasks; otherwise the sum above).
"""
from __future__ import annotations

import re
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from hvdtrain.launcher.errors import LaunchError
from hvdtrain.launcher.hosts import Host, format_hosts, total_slots

_TASKS_ITEM = re.compile(r"^(?P<count>\d+)(\(x(?P<repeat>\d+)\))?$")
SCONTROL_TIMEOUT = 30.0


@dataclass(frozen=True)
class Allocation:
    """The nodes a scheduler gave this job, each with the tasks it may run, and the job's task count."""

    job_id: str
    hosts: list[Host]
    ntasks: int
    scheduler: str = "Slurm"

    def describe(self) -> str:
        """``Slurm job 42 (node1:4,node2:4)``: names the job and its hosts in messages."""
        return f"{self.scheduler} job {self.job_id} ({format_hosts(self.hosts)})"


def expand_tasks_per_node(spec: str) -> list[int]:
    """``"2(x3),1"`` -> ``[2, 2, 2, 1]`` (Slurm's compressed ``SLURM_TASKS_PER_NODE``).

    Raises:
        LaunchError: the value is not in that form.
    """
    counts: list[int] = []
    for item in spec.split(","):
        match = _TASKS_ITEM.match(item.strip())
        if not match:
            raise LaunchError(f"SLURM_TASKS_PER_NODE={spec!r} is not Slurm's `N` / `N(xR)` list; "
                              "run `hvdtrain run` inside the batch script Slurm started, where Slurm sets it")
        counts += [int(match["count"])] * int(match["repeat"] or 1)
    return counts


def scontrol_hostnames(nodelist: str) -> list[str]:
    """Expand a Slurm node list (``node[01-02]``) with ``scontrol show hostnames``.

    Raises:
        LaunchError: ``scontrol`` is missing or fails.
    """
    try:
        proc = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True,
                              timeout=SCONTROL_TIMEOUT)
    except FileNotFoundError as err:
        raise LaunchError("SLURM_JOB_ID is set but `scontrol` is not on PATH, so the job's nodes cannot be read; "
                          "add Slurm's bin directory to PATH, or unset SLURM_JOB_ID to launch outside Slurm") from err
    except subprocess.TimeoutExpired as err:
        raise LaunchError(f"`scontrol show hostnames {nodelist}` did not answer in {SCONTROL_TIMEOUT:g} s; "
                          "check that slurmctld is up (`scontrol ping`)") from err
    if proc.returncode != 0:
        raise LaunchError(f"`scontrol show hostnames {nodelist}` failed: {proc.stderr.strip()}; "
                          "check SLURM_JOB_NODELIST, or unset SLURM_JOB_ID to launch outside Slurm")
    return proc.stdout.split()


def slurm_allocation(environ: Mapping[str, str],
                     expand: Callable[[str], list[str]] = scontrol_hostnames) -> Allocation | None:
    """The Slurm allocation this process runs in, or None outside Slurm (no ``SLURM_JOB_ID``).

    Args:
        environ: the environment to read (``os.environ``).
        expand: turns ``SLURM_JOB_NODELIST`` into host names (``scontrol show hostnames``).

    Raises:
        LaunchError: a Slurm variable is missing or malformed, or the node list cannot be expanded.
    """
    job_id = environ.get("SLURM_JOB_ID")
    if not job_id:
        return None
    missing = [name for name in ("SLURM_JOB_NODELIST", "SLURM_TASKS_PER_NODE") if not environ.get(name)]
    if missing:
        verb = "are" if len(missing) > 1 else "is"
        raise LaunchError(f"SLURM_JOB_ID={job_id} is set but {' and '.join(missing)} {verb} not; run `hvdtrain run` "
                          "inside the batch script or salloc shell that Slurm started, or unset SLURM_JOB_ID")
    names = expand(environ["SLURM_JOB_NODELIST"])
    counts = expand_tasks_per_node(environ["SLURM_TASKS_PER_NODE"])
    if len(names) != len(counts):
        raise LaunchError(f"Slurm job {job_id}: SLURM_JOB_NODELIST names {len(names)} node(s) but "
                          f"SLURM_TASKS_PER_NODE={environ['SLURM_TASKS_PER_NODE']!r} gives {len(counts)}; "
                          "run `hvdtrain run` in the job's own environment")
    hosts = [Host(name, count) for name, count in zip(names, counts) if count > 0]
    return Allocation(job_id, hosts, _ntasks(environ, job_id, total_slots(hosts)))


def _ntasks(environ: Mapping[str, str], job_id: str, slots: int) -> int:
    text = environ.get("SLURM_NTASKS") or environ.get("SLURM_NPROCS")
    if not text:
        return slots
    if not text.isdigit() or not 1 <= int(text) <= slots:
        raise LaunchError(f"Slurm job {job_id}: SLURM_NTASKS={text!r} does not fit its {slots} task slot(s) "
                          "(SLURM_TASKS_PER_NODE); run `hvdtrain run` in the job's own environment")
    return int(text)
