"""A two-stage pipeline on the GPU, both stages on the one GPU (the machine lent here has one): activations
and gradients travel from GPU memory to GPU memory, directly when MPI is CUDA-aware, through pinned host
memory otherwise. A pipeline's messages need MPI: on a machine without it this test says so and skips."""
from __future__ import annotations

import shutil

import pytest

from tests.launch import REPO, results, run_workers

EXACT = REPO / "tests" / "torch" / "workers" / "pipeline_worker.py"


def _mpi_missing() -> str | None:
    import importlib.util

    import horovod.torch as hvd

    if importlib.util.find_spec("mpi4py") is None:
        return "mpi4py is not installed: a pipeline's stages send with it"
    if shutil.which("mpirun") is None:
        return "no mpirun on this machine: a pipeline's stages send with MPI"
    if not hvd.mpi_built():
        return "Horovod was built without MPI (no mpicxx here): a pipeline needs Horovod and mpi4py on one MPI"
    return None


def test_a_two_stage_pipeline_on_the_gpu_trains_as_the_unsplit_model():
    missing = _mpi_missing()
    if missing:
        pytest.skip(missing)
    ranks = results(run_workers(EXACT, ["2", "1f1b:4:1:0", "gpipe:3:2:0.05"], np=2, launcher="mpirun",
                                timeout=240, env={"PIPELINE_DEVICE": "cuda:0"}))
    assert sorted(ranks) == [0, 1]
    for rank in ranks.values():
        for config, found in rank["results"].items():
            assert found["device"] == "cuda:0" and found["transfer"] in ("direct", "pinned"), found
            # float64 on the GPU against float64 on the CPU: equal up to the order of their sums.
            assert found["weight_error"] < 1e-9, (rank["rank"], config, found)
