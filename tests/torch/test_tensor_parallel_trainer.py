"""Tensor parallelism in the Trainer (``hvdtrain.torch.init(tensor=T)``) under real launchers: the weights of
its dense twin, T x D, exact resumes from per-slice checkpoints, and the example's accuracy."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from hvdtrain.core.checkpoint import CheckpointManager
from tests.launch import REPO, results, run_workers

pytestmark = pytest.mark.parallel
WORKER = Path(__file__).parent / "workers" / "tensor_trainer_worker.py"
EXAMPLE = REPO / "examples" / "tensor_parallel_digits.py"
SPLIT_DIM = {"0.weight": 0, "0.bias": 0, "2.weight": 1}  # column layer: output rows; row layer: input columns


def dense_weights(ranks: dict[int, dict]) -> dict[str, np.ndarray]:
    """Replica 0's slices joined into the dense model's parameters; replicated ones equal on every slice."""
    slices = sorted((r for r in ranks.values() if r["data_rank"] == 0), key=lambda r: r["tensor_rank"])
    joined = {}
    for name in slices[0]["params"]:
        parts = [np.array(r["params"][name]) for r in slices]
        if name in SPLIT_DIM:
            joined[name] = np.concatenate(parts, axis=SPLIT_DIM[name])
        else:
            assert all(np.array_equal(part, parts[0]) for part in parts), f"{name} differs across the tensor group"
            joined[name] = parts[0]
    return joined


def assert_same_weights(split: dict[int, dict], dense: dict[int, dict], tolerance: float = 1e-9) -> None:
    got, want = dense_weights(split), dense_weights(dense)
    assert got.keys() == want.keys()
    for name in want:
        assert np.abs(got[name] - want[name]).max() < tolerance, name


@pytest.mark.parametrize(("np_split", "np_dense"), [(2, 1), (4, 2)], ids=["T=2", "T=2xD=2"])
def test_a_split_model_trains_the_weights_of_its_dense_twin(np_split, np_dense):
    args = ["--epochs", "2"]
    split = results(run_workers(WORKER, [*args, "--tensor", "2"], np=np_split, timeout=240))
    dense = results(run_workers(WORKER, [*args, "--tensor", "1"], np=np_dense, timeout=240))
    assert sorted(split) == list(range(np_split))
    assert_same_weights(split, dense)
    assert {rank["predicted_rows"] for rank in split.values()} == {37}  # each sample once, not once per slice
    for rank in split.values():  # replicas of the same slice stay equal
        twin = next(r for r in split.values() if r["tensor_rank"] == rank["tensor_rank"])
        assert rank["params"] == twin["params"]


def test_sigkill_then_resume_from_per_slice_checkpoints_is_exact_and_another_layout_is_refused(tmp_path):
    args = ["--epochs", "3", "--every-n-steps", "4", "--tensor", "2"]
    reference = results(run_workers(WORKER, [*args, "--checkpoint-dir", str(tmp_path / "ref")], timeout=240))
    crashed = run_workers(WORKER, [*args, "--checkpoint-dir", str(tmp_path / "run"), "--die-at-step", "30"],
                          check=False, timeout=240)
    assert crashed.returncode != 0
    newest = CheckpointManager(tmp_path / "run").checkpoints()[-1]
    assert newest.global_step == 28
    assert sorted(p.name for p in newest.path.iterdir()) == [
        "manifest.ckpt", "stage000-tensor000.ckpt", "stage000-tensor001.ckpt"]
    resumed = results(run_workers(WORKER, [*args, "--checkpoint-dir", str(tmp_path / "run"), "--resume"],
                                  timeout=240))
    for rank in (0, 1):
        assert resumed[rank]["resumed_from"].endswith(newest.path.name)
        assert resumed[rank]["global_step"] == reference[rank]["global_step"] == 72
        assert resumed[rank]["params"] == reference[rank]["params"]
    refused = run_workers(WORKER, ["--epochs", "4", "--tensor", "1", "--checkpoint-dir", str(tmp_path / "run"),
                                   "--resume"], check=False, timeout=240)
    output = refused.stdout + refused.stderr
    assert refused.returncode != 0
    assert "was written by 1 pipeline stage x 1 data replica x 2 tensor slices but this job is 1 pipeline stage " \
           "x 2 data replicas" in output and "hvdtrain.torch.init(pipeline=1, tensor=2)" in output, output[-3000:]


@pytest.mark.parametrize("np", [2, 4])
def test_the_tensor_parallel_example_learns_digits(np, tmp_path):
    proc = run_workers(EXAMPLE, ["--tensor", "2", "--epochs", "20", "--no-progress", "--output-dir", str(tmp_path)],
                       np=np, timeout=300)
    final = re.search(r"final val_accuracy=([\d.]+) after 20 epochs on 1 pipeline stage x (\d) data replicas? x 2 "
                      r"tensor slices", proc.stdout)
    assert final and int(final[2]) == np // 2, proc.stdout[-3000:]
    assert float(final[1]) >= 0.95
