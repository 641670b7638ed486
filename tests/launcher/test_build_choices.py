"""scripts/build_horovod.sh's choices, in its dry-run form: MPI or Gloo alone, NCCL, CUDA and the CC list."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

from tests.launch import REPO

SCRIPT = REPO / "scripts" / "build_horovod.sh"
TOOLS = ("bash", "dirname", "readlink", "grep", "tr", "sort", "paste", "cat", "head", "cut", "uname")


def choices(env: dict[str, str]) -> str:
    proc = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHON": sys.executable, "HVDTRAIN_BUILD_DRY_RUN": "1", **env})
    assert proc.returncode == 0, proc.stderr
    line = next(line for line in proc.stderr.splitlines() if "choices:" in line)
    return line


def bare_path(tmp_path, extra: dict[str, str] = ()) -> str:
    """A PATH with the shell tools the script uses and nothing else: no mpicxx, no nvidia-smi."""
    tools = tmp_path / "bin"
    tools.mkdir()
    for tool in TOOLS:
        found = shutil.which(tool)
        if found:
            (tools / tool).symlink_to(found)
    for name, target in dict(extra).items():
        (tools / name).symlink_to(target)
    return str(tools)


def test_with_mpicxx_the_build_uses_mpi_and_keeps_its_cache_key():
    line = choices({})
    assert "MPI: yes" in line and "_mpi-no" not in line and "GPU operations: none" in line


def test_without_mpicxx_the_build_is_gloo_only_under_its_own_cache_key(tmp_path):
    line = choices({"PATH": bare_path(tmp_path)})
    assert "MPI: no (no mpicxx: Gloo only)" in line and "_mpi-no;" in line


def test_nccl_cc_list_and_cuda_home_come_from_the_environment_or_from_nvcc(tmp_path):
    cuda = tmp_path / "cuda-13.0"
    (cuda / "bin").mkdir(parents=True)
    shutil.copy(shutil.which("true"), cuda / "bin" / "nvcc")  # where nvcc lies is all the script reads
    path = f"{cuda / 'bin'}{os.pathsep}{bare_path(tmp_path)}"
    line = choices({"PATH": path, "HOROVOD_GPU_OPERATIONS": "NCCL", "HOROVOD_BUILD_CUDA_CC_LIST": "90"})
    assert "GPU operations: NCCL" in line and "_gpu-NCCL" in line
    assert "CUDA CC list: 90 (from the environment)" in line and f"CUDA: {cuda};" in line
