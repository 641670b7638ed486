"""First multi-process test: 2-process allreduce and broadcast with horovod.torch and horovod.tensorflow,
launched directly with ``horovodrun -np 2 --gloo`` and ``mpirun -np 2`` (no hvdtrain code involved)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.launcher.helpers import TIMEOUT, child_env, explain, worker_lines

pytestmark = pytest.mark.parallel

WORKERS = {
    "torch": r"""
import sys
import horovod.torch as hvd
import torch

hvd.init()
total = hvd.allreduce(torch.tensor([float(hvd.rank() + 1)]), op=hvd.Sum).item()
root = hvd.broadcast(torch.tensor([float(hvd.rank() + 10)]), root_rank=0).item()
sys.stdout.write(f"WORKER rank={hvd.rank()} size={hvd.size()} sum={total:g} bcast={root:g} args=[]\n")
""",
    "tensorflow": r"""
import sys
import horovod.tensorflow as hvd
import tensorflow as tf

hvd.init()
total = float(hvd.allreduce(tf.constant([float(hvd.rank() + 1)]), op=hvd.Sum).numpy()[0])
root = float(hvd.broadcast(tf.constant([float(hvd.rank() + 10)]), root_rank=0).numpy()[0])
sys.stdout.write(f"WORKER rank={hvd.rank()} size={hvd.size()} sum={total:g} bcast={root:g} args=[]\n")
""",
}


def launcher_argv(launcher: str) -> list[str]:
    if launcher == "horovodrun":
        horovodrun = Path(sys.executable).parent / "horovodrun"
        assert horovodrun.exists(), f"{horovodrun} is missing: Horovod is not installed here; run `make setup`"
        return [str(horovodrun), "-np", "2", "--gloo"]
    return ["mpirun", "-np", "2", "--allow-run-as-root", "--bind-to", "none", "--mca", "mpi_yield_when_idle", "1",
            "-x", "PATH", "-x", "PYTHONPATH", "-x", "TF_CPP_MIN_LOG_LEVEL", "-x", "OMP_NUM_THREADS"]


@pytest.mark.parametrize("framework", ["torch", "tensorflow"])
@pytest.mark.parametrize("launcher", ["horovodrun", "mpirun"])
def test_two_process_allreduce_and_broadcast(tmp_path, framework, launcher):
    script = tmp_path / f"{framework}_smoke.py"
    script.write_text(WORKERS[framework])
    proc = subprocess.run([*launcher_argv(launcher), sys.executable, str(script)], capture_output=True, text=True,
                          timeout=TIMEOUT, cwd=tmp_path, env=child_env())
    assert proc.returncode == 0, explain(proc)
    assert worker_lines(proc.stdout) == [f"WORKER rank={rank} size=2 sum=3 bcast=10 args=[]" for rank in (0, 1)], \
        explain(proc)
