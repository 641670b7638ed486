"""Multi-process TensorFlow tests under real horovodrun / mpirun with 2 workers."""
from __future__ import annotations

import itertools
import math
from pathlib import Path

import pytest

from tests.launch import results, run_workers

WORKERS = Path(__file__).parent / "workers"
TRAIN = WORKERS / "train_worker.py"
TIMEOUT = 240
STEPS = math.ceil(300 / 32)  # 300 samples, 16 per rank, 2 ranks
pytestmark = pytest.mark.parallel

MODES = ["fit", "trainer", "loop", "loop_plain", "trainer_uneven", "fit_accum", "trainer_accum"]


@pytest.mark.parametrize("launcher", ["horovodrun", "mpirun"])
def test_first_update_equals_single_process_step_on_the_combined_batch(launcher):
    ranks = results(run_workers(WORKERS / "gradient_worker.py", launcher=launcher, timeout=TIMEOUT))
    assert sorted(ranks) == [0, 1]
    for r in ranks.values():
        for mode in MODES:
            assert r[f"{mode}_update"] > 1e-3, f"{mode}: the step changed nothing"
            assert r[f"{mode}_grad_error"] < 1e-12, (mode, r)
            assert r[f"{mode}_param_spread"] == 0.0, (mode, r)


@pytest.mark.parametrize("api", ["trainer", "fit"])
def test_ranks_agree_and_metrics_are_averaged(api):
    ranks = results(run_workers(TRAIN, ["--api", api, "--epochs", "2", "--rank-metric"], timeout=TIMEOUT))
    assert ranks[0]["digest"] == ranks[1]["digest"]
    assert ranks[0]["global_step"] == ranks[1]["global_step"] == 2 * STEPS
    assert [ranks[r]["history"][0]["rank_value"] for r in (0, 1)] == [0.5, 0.5]
    assert ranks[0]["history"] == ranks[1]["history"]
    assert {"loss", "val_loss"} <= set(ranks[0]["history"][-1])
    # The context counts global samples exactly as the Trainer does, in fit too.
    assert ranks[0]["steps"][STEPS - 1] == [0, STEPS - 1, STEPS, 300]


def test_lr_warmup_inside_keras_fit_ramps_from_single_worker_to_scaled_lr():
    ranks = results(run_workers(TRAIN, ["--api", "fit", "--epochs", "3", "--warmup-epochs", "2"], timeout=TIMEOUT))
    lrs = ranks[0]["lrs"]
    assert lrs == ranks[1]["lrs"]
    assert lrs[0] == pytest.approx(0.01)                     # base LR (single worker)
    assert lrs[STEPS] == pytest.approx(0.01 * 1.5)           # half-way through warmup
    assert lrs[2 * STEPS:] == pytest.approx([0.02] * STEPS)  # scaled by world size after warmup
    assert all(a < b for a, b in itertools.pairwise(lrs[:2 * STEPS]))


@pytest.mark.parametrize("api", ["trainer", "fit"])
def test_early_stopping_stops_every_rank_at_the_same_epoch(api):
    ranks = results(run_workers(TRAIN, ["--api", api, "--epochs", "10", "--patience", "2"], timeout=TIMEOUT))
    for r in ranks.values():
        assert len(r["history"]) == 3, r["stop_reason"]
        assert "early stopping: plateau" in r["stop_reason"]
    assert ranks[0]["digest"] == ranks[1]["digest"]


def test_nan_loss_on_one_rank_stops_all_ranks_without_applying_it(tmp_path):
    ranks = results(run_workers(TRAIN, ["--epochs", "3", "--nan-at-step", "4", "--checkpoint-dir", str(tmp_path)],
                                timeout=TIMEOUT))
    for r in ranks.values():
        assert r["global_step"] == 4, r
        assert "non-finite loss on rank 1 at step 4; that step was not applied" in r["stop_reason"]
        assert r["finite"], "the NaN step must not reach the weights"
    assert ranks[0]["digest"] == ranks[1]["digest"]
    assert not list(tmp_path.glob("*.ckpt")), "a stopped epoch must not be checkpointed"


def test_nan_loss_inside_keras_fit_stops_all_ranks_at_the_same_step_without_applying_it():
    ranks = results(run_workers(TRAIN, ["--api", "fit", "--epochs", "3", "--nan-at-step", "4"], timeout=TIMEOUT))
    for r in ranks.values():
        assert r["global_step"] == 4, r
        assert "non-finite loss on rank 1 at step 4; that step was not applied" in r["stop_reason"]
        assert r["finite"], "the NaN step must not reach the weights"
    assert ranks[0]["digest"] == ranks[1]["digest"]


def test_keras_fit_turns_off_xla_which_cannot_hold_horovods_allreduce():
    # Keras compiles with XLA by default where there is a GPU; forced here on CPU the same way.
    proc = run_workers(TRAIN, ["--api", "fit", "--epochs", "1", "--jit-compile"], timeout=TIMEOUT)
    ranks = results(proc)
    assert ranks[0]["digest"] == ranks[1]["digest"]
    assert ranks[0]["global_step"] == STEPS


def test_trainer_on_uneven_dataset_shards_takes_the_fewest_steps_on_every_rank():
    # Rank 0's shard: 171 samples, 11 batches of 16; rank 1's: 129 samples, 9 batches. Both take 9 per epoch.
    ranks = results(run_workers(TRAIN, ["--api", "trainer_dataset", "--epochs", "2"], timeout=TIMEOUT))
    assert sorted(ranks) == [0, 1]
    for r in ranks.values():
        assert r["global_step"] == 2 * 9, r
        assert [s[:3] for s in r["steps"]] == [[e, b, 9 * e + b + 1] for e in range(2) for b in range(9)]
        assert r["finite"]
    assert ranks[0]["digest"] == ranks[1]["digest"]
    assert ranks[0]["history"] == ranks[1]["history"]
    last = ranks[0]["history"][-1]
    assert last["val_loss"] == pytest.approx(last["val_loss_of_arrays"], rel=1e-6), "validation is exact"
