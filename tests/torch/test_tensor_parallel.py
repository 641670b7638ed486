"""Tensor-parallel layers under real launchers: each equals its dense twin, forward and backward."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.launch import results, run_workers

pytestmark = pytest.mark.parallel
WORKER = Path(__file__).parent / "workers" / "tensor_parallel_worker.py"


@pytest.mark.parametrize("np", [2, 3])
def test_tensor_parallel_layers_equal_their_dense_twins_forward_and_backward(np):
    ranks = results(run_workers(WORKER, np=np, timeout=180))
    assert sorted(ranks) == list(range(np))
    for rank in ranks.values():
        assert rank["loss_error"] < 1e-10, rank
        assert len(rank["grad_error"]) == 11, rank  # every weight and bias; the row layers' biases are whole
        assert max(rank["grad_error"].values()) < 1e-10, rank
        assert rank["shard_rows"] == 18 // np  # each rank holds only its slice
        assert "ColumnParallelLinear's out_features is 7" in rank["uneven"] and f"multiple of {np}" in rank["uneven"]
