"""Input pipelines and custom steps on 2 real Horovod workers."""
from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.launch import results, run_workers

WORKER = Path(__file__).parent / "workers" / "inputs_worker.py"
pytestmark = pytest.mark.parallel


@pytest.mark.parametrize(("launcher", "accumulation"), [("horovodrun", 1), ("mpirun", 3)])
def test_uneven_streams_end_every_epoch_at_the_same_step_on_every_rank(launcher, accumulation):
    started = time.monotonic()
    ranks = results(run_workers(WORKER, ["uneven", "--epochs", "3", "--accumulation", str(accumulation)],
                                launcher=launcher, timeout=120))
    assert time.monotonic() - started < 120
    assert ranks[0]["steps"] == ranks[1]["steps"]
    # Rank 1 has 4 batches: each epoch ends after 4 batches on both ranks, the last one always an update.
    assert [s[:2] for s in ranks[0]["steps"]] == [[e, b] for e in range(3) for b in range(4)]
    updates = 4 // accumulation + (4 % accumulation > 0)
    assert ranks[0]["global_step"] == ranks[1]["global_step"] == 3 * updates
    assert ranks[0]["params"] == ranks[1]["params"]
    assert [s[3] for s in ranks[0]["steps"][:4]] == [16, 32, 48, 64]  # global samples, agreed


def test_dict_batches_with_a_custom_step_train_as_a_hand_written_horovod_loop():
    ranks = results(run_workers(WORKER, ["dict", "--epochs", "2"], timeout=180))
    for rank in (0, 1):
        flat = [v for p in ranks[rank]["params"] for v in _flat(p)]
        reference = [v for p in ranks[rank]["reference"] for v in _flat(p)]
        assert flat == pytest.approx(reference, abs=1e-5)
    assert {"loss", "ce", "l2"} <= set(ranks[0]["history"][-1])
    assert ranks[0]["history"][-1]["loss"] == pytest.approx(
        ranks[0]["history"][-1]["ce"] + ranks[0]["history"][-1]["l2"], rel=1e-5)


def _flat(value):
    return [x for v in value for x in _flat(v)] if isinstance(value, list) else [value]
