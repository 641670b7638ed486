"""Multi-process PyTorch tests under real horovodrun / mpirun with 2 workers."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from tests.launch import results, run_workers

WORKERS = Path(__file__).parent / "workers"
TRAIN = WORKERS / "train_worker.py"
pytestmark = pytest.mark.parallel


@pytest.mark.parametrize("launcher", ["horovodrun", "mpirun"])
def test_first_step_matches_single_process_on_combined_batch(launcher):
    ranks = results(run_workers(WORKERS / "gradient_worker.py", launcher=launcher))
    assert sorted(ranks) == [0, 1]
    for r in ranks.values():
        assert r["grad_error"] < 1e-12, r
        assert r["param_spread"] == 0.0, r
        assert r["norm_error"] < 1e-12 and r["clip_error"] < 1e-12, r


def test_ranks_agree_after_training():
    ranks = results(run_workers(TRAIN, ["--epochs", "2"]))
    assert ranks[0]["digest"] == ranks[1]["digest"]
    assert ranks[0]["global_step"] == ranks[1]["global_step"] == 2 * math.ceil(300 / 32)


def test_metric_average_gives_every_rank_the_mean():
    ranks = results(run_workers(TRAIN, ["--epochs", "1", "--rank-metric"]))
    assert [ranks[r]["history"][0]["rank_value"] for r in (0, 1)] == [0.5, 0.5]


def test_without_metric_average_ranks_see_their_own_values():
    # The control for the test above: it proves that averaging is what made the values equal.
    ranks = results(run_workers(TRAIN, ["--epochs", "1", "--rank-metric", "--no-metric-average"]))
    assert [ranks[r]["history"][0]["rank_value"] for r in (0, 1)] == [0.0, 1.0]


def test_lr_warmup_ramps_from_single_worker_to_scaled_lr():
    ranks = results(run_workers(TRAIN, ["--epochs", "3", "--warmup-epochs", "2"]))
    lrs = ranks[0]["lrs"]
    steps = math.ceil(300 / 32)
    assert lrs == ranks[1]["lrs"]
    assert lrs[0] == pytest.approx(0.01)                     # base LR (single worker)
    assert lrs[steps] == pytest.approx(0.01 * 1.5)           # half-way through warmup
    assert lrs[2 * steps:] == pytest.approx([0.02] * steps)  # scaled by world size after warmup
    warmup = lrs[:2 * steps]
    assert all(a < b for a, b in zip(warmup, warmup[1:]))  # noqa: RUF007


def test_early_stopping_stops_every_rank_at_the_same_epoch():
    ranks = results(run_workers(TRAIN, ["--epochs", "10", "--patience", "2"]))
    for r in ranks.values():
        assert r["epoch"] == 3, r["stop_reason"]
        assert "early stopping: plateau" in r["stop_reason"]
    assert ranks[0]["digest"] == ranks[1]["digest"]


def test_nan_loss_on_one_rank_stops_all_ranks_at_that_step(tmp_path):
    ranks = results(run_workers(TRAIN, ["--epochs", "3", "--nan-at-step", "4",
                                        "--checkpoint-dir", str(tmp_path)]))
    for r in ranks.values():
        assert r["global_step"] == 4, r
        assert "non-finite loss on rank 1 at step 4; that step was not applied" in r["stop_reason"]
        assert all(math.isfinite(v) for v in r["params"]), "the NaN step must not reach the weights"
    assert not list(tmp_path.glob("*.ckpt")), "a NaN model must not be checkpointed"


def test_predict_on_all_ranks_returns_every_output_in_sample_order():
    # 101 samples in global batches of 32: shards of 51 and 50, the last batch split 3 and 2.
    ranks = results(run_workers(TRAIN, ["--epochs", "1", "--predict"], timeout=240))
    assert sorted(ranks) == [0, 1]
    assert ranks[0]["digest"] == ranks[1]["digest"]
    for r in ranks.values():
        assert len(r["predicted"]) == 101
        np.testing.assert_allclose(r["predicted"], r["whole"], atol=1e-6, err_msg="row i must be sample i's output")
    assert ranks[0]["predicted"] == ranks[1]["predicted"]
