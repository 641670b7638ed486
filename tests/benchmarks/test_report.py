"""The results tables and the goals are rendered from the results JSON and benchmarks/goals.yaml alone.

The synthetic run below differs from the committed one on purpose (4 cores, 4 workers, tiny models, batch
64, 3 threads), so a number copied into the renderer's code would show up as a wrong cell.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from benchmarks import matrix, report, sysinfo
from benchmarks.common import MODELS, parameter_count, parameter_shapes
from benchmarks.matrix import Tuning

NP = 4


def _throughput(variant: matrix.Variant, np: int, sps: float, **extra: Any) -> dict[str, Any]:
    return {"kind": "throughput", "key": variant.key, "label": variant.label, "framework": variant.framework,
            "model": "tiny-cnn", "np": np, "batch_size": 64, "threads": 3, "status": "ok", "samples_per_sec": sps,
            "step_ms": 10.0, "command": f"launch {variant.key}", **extra}


def _tuning(key: str, sps: float, model: str = "tiny-mlp", **extra: Any) -> dict[str, Any]:
    case = matrix.tuning_case(key)
    return {"kind": "tuning", "key": key, "label": case.label, "group": case.group, "reference": case.reference,
            "model": model, "np": case.np if case.np == 1 else NP, "threads": case.variant.threads, "status": "ok",
            "samples_per_sec": sps, **extra}


def _allreduce(case: matrix.AllreduceCase, scale: float) -> dict[str, Any]:
    rows = [{"bytes": 4 << 10, "median_ms": 0.01 * scale, "algbw_gbps": 0.4 / scale},
            {"bytes": 1 << 20, "median_ms": 0.5 * scale, "algbw_gbps": 2.0 / scale}]
    return {"kind": "allreduce", "key": case.key, "label": case.label, "np": NP, "status": "ok", "rows": rows}


def synthetic_results(cores: int, **machine: Any) -> dict[str, Any]:
    """A small results document: one tiny model, 1 and NP workers, a few tuning cases."""
    phases = {"data": 1.0, "fwd_bwd": 8.0, "step": 1.0}
    return {
        "machine": {"cpu": "Test CPU", "cores": cores, "cpu_flags": ["avx2"], "memory_gib": 8.0, "kernel": "6.0",
                    "python": "3.11", "torch": "2", "tensorflow": "2", "keras": "3", "horovod": "0.28",
                    "open_mpi": "Open MPI 4", "mpi4py": "4", **machine},
        "command": "python -m benchmarks.run --models tiny-cnn", "quick": False, "started": "2026-01-01 00:00:00",
        "duration_s": 60.0, "steps": {"tiny-cnn": {"warmup": 1, "steps": 2, "repeats": 1}}, "models": ["tiny-cnn"],
        "nps": [1, NP], "samples_per_rank": 256,
        "throughput": [
            _throughput(matrix.TORCH_CEILING, 1, 100.0),
            _throughput(matrix.TORCH_CEILING, NP, 380.0, per_process=[95.0] * NP, phases_ms=phases),
            _throughput(matrix.TORCH_HVD_MPI, NP, 300.0, phases_ms={**phases, "allreduce_wait": 2.0}),
            _throughput(matrix.TORCH_DDP, NP, 290.0),
        ],
        "allreduce": [_allreduce(matrix.ALLREDUCE_HVD_MPI, 1.0), _allreduce(matrix.ALLREDUCE_HVD_GLOO, 2.0),
                      _allreduce(matrix.ALLREDUCE_MPI4PY, 0.5)],
        "tuning": [
            _tuning(Tuning.BASELINE, 300.0, phases_ms={"fwd_bwd": 8.0}),
            _tuning(Tuning.NO_YIELD, 200.0, phases_ms={"fwd_bwd": 12.0}),
            _tuning("fusion-4mb", 301.0, model="tiny-cnn"),
            _tuning(Tuning.FP16_MPI, 250.0),
            _tuning(Tuning.THREADS, 150.0),
            _tuning(Tuning.ONE_PROCESS, 310.0),
            _tuning(Tuning.CNN_BASELINE, 290.0, model="tiny-cnn"),
        ],
    }


def render(tmp_path: Path, data: dict[str, Any], goals: list[report.Goal] | None = None) -> str:
    md = tmp_path / "performance-results.md"
    report.write_report(data, md, tmp_path / "performance.png", goals)
    return md.read_text()


def test_goals_are_data_and_each_is_marked_met_or_not(tmp_path):
    goals = [report.Goal("raw Horovod vs DDP", matrix.TORCH_HVD_MPI.key, matrix.TORCH_DDP.key, 1.0),
             report.Goal("raw Horovod vs the ceiling", matrix.TORCH_HVD_MPI.key, matrix.TORCH_CEILING.key, 0.9),
             report.Goal("not measured", matrix.HVDTRAIN_TORCH.key, matrix.TORCH_DDP.key, 1.0)]
    text = render(tmp_path, synthetic_results(cores=4), goals)
    assert "| raw Horovod vs DDP | 1 | 1.03 (met) |" in text  # 300 / 290
    assert "| raw Horovod vs the ceiling | 0.9 | 0.79 (not met) |" in text  # 300 / 380
    assert "| not measured | 1 | n/a |" in text
    assert [g.variant for g in report.load_goals()][:1] == [matrix.HVDTRAIN_TORCH.key]


def test_the_tables_hold_the_runs_numbers_and_no_prose(tmp_path):
    text = render(tmp_path, synthetic_results(cores=4, gpus=[]))
    assert "- Machine: Test CPU, 4 cores, 8.0 GiB, no GPU" in text
    assert f"| {NP} | raw Horovod, MPI | 300 | 1.03 | 1.00 | 79% | 10.0 |" in text
    assert "| 4 KiB | 0.01 ms, 0.40 GB/s |" in text
    assert "| tiny-cnn | no communication (ceiling) | 1.0 | 8.0 | n/a | 1.0 | 10.0 |" in text
    assert "| mpirun without mpi_yield_when_idle | tiny-mlp | 200 | -33% |" in text
    assert (tmp_path / "performance.png").read_bytes()[:4] == b"\x89PNG"
    for sentence in ("because", "cores the allreduce", "recommended"):
        assert sentence not in text.lower()


@pytest.mark.parametrize("model", MODELS)
def test_parameter_shapes_are_the_pytorch_models(model):
    from benchmarks.torch_common import build_model

    shapes = [tuple(p.shape) for p in build_model(model).parameters()]
    assert parameter_shapes(model) == shapes
    assert parameter_count(model) == sum(math.prod(s) for s in shapes)


def test_the_machine_description_records_gpus():
    assert isinstance(sysinfo.describe()["gpus"], list)
