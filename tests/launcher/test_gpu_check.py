"""scripts/gpu_check.sh's CPU side, as on the lent GPU machine: no TensorFlow, no jsonschema, no mpirun.

Its dry run goes through the stages that can run without a GPU (the machine's facts, the build's choices, the
GPU suite's collection, the benchmark's arguments), each under its time limit, and records them."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

from tests.launch import REPO

TOOLS = ("bash", "timeout", "date", "tee", "mkdir", "ls", "head", "tail", "nproc", "dirname", "readlink", "grep",
         "tr", "sort", "paste", "cat", "cut", "uname", "env", "printf")


def test_the_gpu_check_dry_run_passes_every_stage_without_tensorflow_or_mpirun(tmp_path):
    tools, missing, out = tmp_path / "bin", tmp_path / "missing", tmp_path / "out"
    tools.mkdir()
    missing.mkdir()
    for tool in TOOLS:
        if shutil.which(tool):
            (tools / tool).symlink_to(shutil.which(tool))
    for module in ("tensorflow", "keras", "jsonschema"):
        (missing / f"{module}.py").write_text(f"raise ImportError('no module named {module} on this machine')\n")
    env = {**os.environ, "PATH": str(tools), "PYTHONPATH": f"{missing}{os.pathsep}{REPO}", "GPU_CHECK_DRY_RUN": "1"}
    proc = subprocess.run(["bash", str(REPO / "scripts" / "gpu_check.sh"), str(out), sys.executable],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = (out / "summary.txt").read_text().splitlines()
    assert [line.split()[0] for line in summary] == ["facts", "build", "collect", "bench-args"]
    assert all(" rc=0 " in line for line in summary), summary
    assert "mpirun: missing" in (out / "facts.log").read_text()
    assert "MPI: no (no mpicxx: Gloo only)" in (out / "build.log").read_text()
    assert "tests/gpu/test_gpu_training.py::" in (out / "collect.log").read_text()
