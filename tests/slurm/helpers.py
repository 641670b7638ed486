"""Submit to the local Slurm and watch jobs with its own commands (sbatch, scontrol, scancel)."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tests.launcher.helpers import child_env

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "slurm_local.sh"
STATE = os.environ.get("HVDTRAIN_SLURM_STATE", "/var/lib/hvdtrain-slurm")
FINISHED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE",
            "PREEMPTED"}
COMMAND_TIMEOUT = 60


def slurm_command(*argv: str, cwd: str | os.PathLike | None = None) -> str:
    """Run a Slurm client command; its stdout, or AssertionError with its stderr."""
    proc = subprocess.run(list(argv), capture_output=True, text=True, cwd=cwd, env=job_env(),
                          timeout=COMMAND_TIMEOUT)
    assert proc.returncode == 0, f"{' '.join(argv)} failed (exit {proc.returncode}): {proc.stderr.strip()}"
    return proc.stdout


def job_env() -> dict[str, str]:
    """What jobs inherit (sbatch passes the environment on): this checkout's hvdtrain, the venv's commands."""
    env = child_env()
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


@dataclass
class SlurmCluster:
    """The running one-node cluster, and the jobs the tests submitted to it."""

    node: str
    cpus: int
    submitted: list[str] = field(default_factory=list)

    @classmethod
    def read(cls) -> SlurmCluster:
        """The node and its CPUs, as ``sinfo`` reports them."""
        node, cpus = slurm_command("sinfo", "-h", "-N", "-o", "%N %c").split()[:2]
        return cls(node, int(cpus))

    def submit(self, *args: str, cwd: str | os.PathLike) -> str:
        """``sbatch ARGS`` from ``cwd``; returns the job id."""
        job_id = slurm_command("sbatch", "--parsable", *args, cwd=cwd).strip().split(";")[0]
        self.submitted.append(job_id)
        return job_id

    def job(self, job_id: str) -> dict[str, str]:
        """``scontrol show job`` as a mapping (JobState, ExitCode, Restarts, ...)."""
        text = slurm_command("scontrol", "show", "job", "-o", job_id)
        return dict(token.split("=", 1) for token in text.split() if "=" in token)

    def wait(self, job_id: str, done: Callable[[dict[str, str]], bool], timeout: float, what: str,
             log: Path | None = None) -> dict[str, str]:
        """Poll the job until ``done(job)``; AssertionError naming ``what``, the job's state and the end of
        its ``log`` at the timeout."""
        deadline = time.monotonic() + timeout
        while True:
            job = self.job(job_id)
            if done(job):
                return job
            assert time.monotonic() < deadline, (
                f"job {job_id}: no {what} after {timeout:g} s; JobState={job.get('JobState')} "
                f"Reason={job.get('Reason')} Restarts={job.get('Restarts')}"
                + (f"\nits log ends:\n{log_tail(log)}" if log is not None else ""))
            time.sleep(0.2)

    def wait_finished(self, job_id: str, timeout: float, log: Path | None = None) -> dict[str, str]:
        """Wait until the job completed, failed or was cancelled."""
        return self.wait(job_id, lambda job: job.get("JobState") in FINISHED, timeout, "end", log)


def cancel_jobs(job_ids: list[str]) -> None:
    """scancel those of ``job_ids`` still queued or running (a failed test leaves none behind)."""
    if job_ids:
        subprocess.run(["scancel", *job_ids], capture_output=True, timeout=COMMAND_TIMEOUT)


def log_tail(path: Path, chars: int = 4000) -> str:
    """The end of a job's log, for assertion messages."""
    return path.read_text(errors="replace")[-chars:] if path.exists() else f"({path} was not written)"
