"""Projects made by `hvdtrain new` train on a real Slurm through their own batch script, as generated.

Every job is submitted with `sbatch` to the one-node Slurm of `make slurm-up` (slurmctld + slurmd on
this host) and runs `hvdtrain run` inside its allocation.
"""
from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from tests.launcher.helpers import final_accuracy, hvdtrain, write_script
from tests.slurm.helpers import log_tail, slurm_command

pytestmark = pytest.mark.parallel

JOB_TIMEOUT = 150  # a generated project trains its 20 epochs in about 20 s here


def new_project(parent: Path, framework: str) -> Path:
    """``hvdtrain new team --framework FRAMEWORK --gpus-per-node 0`` in ``parent``."""
    created = hvdtrain("new", "team", "--framework", framework, "--gpus-per-node", "0", cwd=parent)
    assert created.returncode == 0, created.stderr
    return parent / "team"


@pytest.mark.timeout(JOB_TIMEOUT + 60)
@pytest.mark.parametrize("framework", ["pytorch", "tensorflow"])
def test_generated_batch_script_trains_as_it_is(slurm, tmp_path, framework):
    project = new_project(tmp_path, framework)
    script = (project / "slurm" / "train.sbatch").read_text()
    assert "hvdtrain run --config run.yaml train.py --resume" in script and "#SBATCH --requeue" in script
    assert "--gpus" not in script.replace("##SBATCH", "")

    started = time.monotonic()
    job_id = slurm.submit("team/slurm/train.sbatch", cwd=tmp_path)  # from outside the project, no edits
    log = tmp_path / f"team-{job_id}.out"
    job = slurm.wait_finished(job_id, JOB_TIMEOUT, log)
    assert (job["JobState"], job["ExitCode"]) == ("COMPLETED", "0:0"), log_tail(log)

    text = log.read_text()
    assert f"2 worker(s) in Slurm job {job_id} ({slurm.node}:2)" in text, log_tail(log)
    accuracy = final_accuracy(text)
    assert accuracy is not None and accuracy >= 0.95, log_tail(log)
    assert (project / "runs" / "checkpoints").is_dir() and any((project / "runs" / "checkpoints").iterdir())
    print(f"{framework}: job {job_id} trained to val_accuracy={accuracy} in {time.monotonic() - started:.0f} s")


@pytest.mark.timeout(2 * JOB_TIMEOUT + 60)
# PyTorch's template only (CI time): the TensorFlow template's resume is tests/launcher/test_new_project_trains.py.
@pytest.mark.parametrize("framework", ["pytorch"])
def test_requeued_job_resumes_from_its_checkpoint(slurm, tmp_path, framework):
    project = new_project(tmp_path, framework)
    checkpoints = project / "runs" / "checkpoints"
    job_id = slurm.submit("team/slurm/train.sbatch", cwd=tmp_path)
    log = tmp_path / f"team-{job_id}.out"

    # Requeue while it trains: after its first checkpoint, long before its 20th epoch.
    slurm.wait(job_id, lambda job: job["JobState"] == "RUNNING" and any(checkpoints.glob("*.ckpt")),
               JOB_TIMEOUT, "checkpoint", log)
    requeued_at = time.monotonic()
    slurm_command("scontrol", "requeue", job_id)
    job = slurm.wait_finished(job_id, JOB_TIMEOUT, log)
    text = log.read_text()
    assert (job["JobState"], job["ExitCode"], job["Restarts"]) == ("COMPLETED", "0:0", "1"), log_tail(log)

    assert "DUE TO JOB REQUEUE" in text, log_tail(log)
    first, second = text.split("DUE TO JOB REQUEUE", 1)
    assert "restart 0" in first and "restart 1" in second, log_tail(log)
    resumed = re.search(r"resumed from (\S+ckpt-epoch(\d+)\S*) at epoch (\d+)", second)
    assert resumed, log_tail(log)
    assert Path(resumed[1]).parent == checkpoints and int(resumed[2]) == int(resumed[3]) >= 1
    accuracy = final_accuracy(second)
    assert accuracy is not None and accuracy >= 0.95, log_tail(log)
    print(f"{framework}: job {job_id} resumed at epoch {resumed[3]} and finished "
          f"{time.monotonic() - requeued_at:.0f} s after the requeue")


@pytest.mark.timeout(120)
def test_hvdtrain_run_takes_workers_and_hosts_from_the_allocation(slurm, tmp_path):
    write_script(tmp_path)
    job_id = slurm.submit("--nodes=1", "--ntasks-per-node=2", "--output=alloc-%j.out", "--wrap",
                          "hvdtrain run --dry-run worker.py; hvdtrain run worker.py; "
                          "hvdtrain run -np 3 worker.py; echo status=$?", cwd=tmp_path)
    log = tmp_path / f"alloc-{job_id}.out"
    job = slurm.wait_finished(job_id, 90, log)
    text = log.read_text()
    assert job["JobState"] == "COMPLETED", log_tail(log)
    dry_run = next(line for line in text.splitlines() if re.match(r"^\S*mpirun ", line))
    assert f"-np 2 -H {slurm.node}:2 " in dry_run and "--allow-run-as-root" in dry_run, text
    assert re.findall(r"WORKER rank=(\d) size=2 sum=3", text) in (["0", "1"], ["1", "0"]), text
    assert (f"-np 3 is more than the 2 task(s) of Slurm job {job_id} ({slurm.node}:2); drop -np" in text
            and "`sbatch --ntasks=3`" in text), text
    assert text.rstrip().endswith("status=2"), text


@pytest.mark.timeout(60)
def test_slurm_node_lists_are_expanded_by_scontrol(slurm):
    from hvdtrain.launcher.allocation import slurm_allocation
    from hvdtrain.launcher.hosts import Host

    allocation = slurm_allocation({"SLURM_JOB_ID": "7", "SLURM_JOB_NODELIST": "node[01-03],gpu7",
                                   "SLURM_TASKS_PER_NODE": "4(x2),2,1", "SLURM_NTASKS": "11"})
    assert allocation.hosts == [Host("node01", 4), Host("node02", 4), Host("node03", 2), Host("gpu7", 1)]
    assert allocation.ntasks == 11 and allocation.describe() == "Slurm job 7 (node01:4,node02:4,node03:2,gpu7:1)"
