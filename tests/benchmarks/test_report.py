"""The report computes its sentences from the results: other machines, worker counts and models read differently.

The synthetic run below differs from the committed one on purpose (4 or 16 cores, 4 workers, tiny models,
batch 64, 3 threads), so a fact copied into the report's code would show up as a wrong sentence.
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


def render(tmp_path: Path, data: dict[str, Any]) -> str:
    md = tmp_path / "performance.md"
    report.write_markdown(data, md, tmp_path / "performance.png")
    return md.read_text()


def test_sentences_follow_the_cores_workers_and_models_of_the_run(tmp_path):
    text = render(tmp_path, synthetic_results(cores=4, gpus=[]))
    assert "- CPU: Test CPU, 4 cores (avx2), 8.0 GiB memory, Linux 6.0, no GPU" in text
    assert "- Batch 64 per worker, SGD with momentum 0.9, cross-entropy;" in text
    assert "- Three intra-op threads per worker (`torch.set_num_threads(3)`;" in text
    assert f"### Launch commands ({NP} workers)" in text
    assert f"## Allreduce latency and bandwidth ({NP} workers)" in text
    assert f"for {NP} workers the ring bus bandwidth is 1.5× that" in text
    assert "so neither bound can be beaten by hvdtrain's own code: on 4 cores the allreduce" in text
    assert "burning cores the other ranks compute on" in text
    assert "casts every gradient to float16 and back on the same four cores" in text
    assert f"Two intra-op threads per worker put {2 * NP} busy threads on 4 cores" in text
    assert f"on the tiny MLP (+3% vs {NP} Horovod workers)" in text
    assert f"Raw Horovod PyTorch loop, tiny MLP, {NP} workers unless marked tiny CNN" in text
    assert "It barely matters here: the tiny CNN has only eight gradient tensors, and the two largest carry 96%" in text
    for fact in ("2 cores", "two cores", "six gradient tensors", "2 workers", "Batch 128", "the MLP", "(2 workers)"):
        assert fact not in text, fact


def test_machine_facts_that_are_not_true_are_not_claimed(tmp_path):
    text = render(tmp_path, synthetic_results(cores=16, gpus=["Test GPU"]))
    assert "16 cores (avx2), 8.0 GiB memory, Linux 6.0, GPU: Test GPU (unused" in text
    assert "so neither bound can be beaten by hvdtrain's own code.\n" in text  # 4 workers leave cores idle
    assert "burning a core:" in text
    assert "casts every gradient to float16 and back on the CPU" in text
    assert f"put {2 * NP} busy threads on 16 cores" in text


def test_results_that_do_not_record_gpus_make_no_claim_about_them(tmp_path):
    data = synthetic_results(cores=4)
    assert "Linux 6.0\n" in render(tmp_path, data)


@pytest.mark.parametrize("model", MODELS)
def test_parameter_shapes_are_the_pytorch_models(model):
    from benchmarks.torch_common import build_model

    shapes = [tuple(p.shape) for p in build_model(model).parameters()]
    assert parameter_shapes(model) == shapes
    assert parameter_count(model) == sum(math.prod(s) for s in shapes)


def test_the_machine_description_records_gpus():
    assert isinstance(sysinfo.describe()["gpus"], list)
