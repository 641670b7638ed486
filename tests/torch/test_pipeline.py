"""Pipeline parallelism in the Trainer, under real mpirun: exact training, the 1F1B bound, resume, faults."""
from __future__ import annotations

import math
import re
import time
from pathlib import Path

import pytest

from hvdtrain.core.checkpoint import CheckpointManager
from hvdtrain.engine.watchdog import TIMEOUT_ENV
from tests.launch import REPO, results, run_workers
from tests.launcher.helpers import hvdtrain
from tests.probes import steps_per_epoch

pytestmark = pytest.mark.parallel
WORKERS = Path(__file__).parent / "workers"
EXACT = WORKERS / "pipeline_worker.py"
TRAIN = WORKERS / "pipeline_train_worker.py"


# schedule:micro_batches:accumulation:clip[:overflow_step] (0.05 clips every step: the norm spans every
# stage; an overflow step trains in float16 and overflows the first stage's gradients alone at that step)
@pytest.mark.parametrize(("np", "stages", "configs"), [
    (2, 2, ["gpipe:4:1:0", "1f1b:4:1:0", "1f1b:3:2:0.05", "1f1b:4:1:0:3"]),
    (4, 2, ["gpipe:2:1:0.05", "1f1b:4:2:0"]),
    (3, 3, ["1f1b:4:1:0", "gpipe:2:1:0", "1f1b:3:1:0.05:2"]),
], ids=["P2xD1", "P2xD2", "P3xD1"])
def test_the_pipeline_trains_exactly_as_the_unsplit_model(np, stages, configs):
    ranks = results(run_workers(EXACT, [str(stages), *configs], np=np, launcher="mpirun", timeout=240))
    assert sorted(ranks) == list(range(np))
    for rank in ranks.values():
        # Horovod's world is the stage's replicas; the backend's local facts are the node's (one node here).
        assert rank["horovod_world"] == [rank["replica"], np // stages], rank
        assert rank["local"] == [rank["rank"], np], rank
        assert rank["from_root"] == 0 and rank["gathered"] == [r // (np // stages) for r in range(np)], rank
        for config, found in rank["results"].items():
            schedule, micro = config.split(":")[:2]
            assert found["weight_error"] < 1e-10, (rank["rank"], config, found)
            assert found["transfer"] == "host"
            assert found["loss"] == pytest.approx(found["ref_loss"], rel=1e-9)
            # GPipe holds every micro-batch's activations; 1F1B at most the stages still ahead, whatever M is.
            bound = int(micro) if schedule == "gpipe" else min(stages - rank["stage"], int(micro))
            assert found["peak_saved"] == bound, (rank["rank"], config, found)
            if config.count(":") == 4:  # every stage skipped the overflowing step and halved its scale
                assert found["scale"] == found["ref_scale"] == 2.0 ** 15, (rank["rank"], config, found)


def test_sigkill_mid_epoch_then_resume_equals_the_uninterrupted_run(tmp_path):
    # In float16: each stage's part carries its loss scale.
    args = ["--epochs", "2", "--every-n-steps", "4", "--precision", "16-mixed"]
    reference = results(run_workers(TRAIN, [*args, "--checkpoint-dir", str(tmp_path / "ref")], launcher="mpirun"))
    crashed = run_workers(TRAIN, [*args, "--checkpoint-dir", str(tmp_path / "run"), "--die-at-step", "14"],
                          launcher="mpirun", check=False)
    assert crashed.returncode != 0
    saved = CheckpointManager(tmp_path / "run").checkpoints()
    assert saved[-1].path.name == "ckpt-epoch0000-step00000012"
    assert sorted(p.name for p in saved[-1].path.iterdir()) == ["manifest.ckpt", "stage000.ckpt", "stage001.ckpt"]

    resumed = run_workers(TRAIN, [*args, "--checkpoint-dir", str(tmp_path / "run"), "--resume"], launcher="mpirun")
    ranks = results(resumed)
    assert "at epoch 0, step 12 (batch 12 of the epoch)" in resumed.stdout
    for rank in (0, 1):
        assert ranks[rank]["resumed_from"].endswith("ckpt-epoch0000-step00000012")
        assert ranks[rank]["global_step"] == reference[rank]["global_step"] == 38
        assert ranks[rank]["params"] == pytest.approx(reference[rank]["params"], abs=1e-6)
        assert ranks[rank]["loss_scale"] == reference[rank]["loss_scale"] == ranks[0]["loss_scale"]
    assert ranks[0]["history"][-1]["val_loss"] == pytest.approx(reference[0]["history"][-1]["val_loss"])

    # The newest checkpoint with a corrupted part is passed over for the one before it.
    newest = CheckpointManager(tmp_path / "ref").checkpoints()[-1].path
    part = newest / "stage001.ckpt"
    part.write_bytes(part.read_bytes()[:-50])
    refused = run_workers(TRAIN, ["--epochs", "2", "--checkpoint-dir", str(tmp_path / "ref"), "--resume",
                                  "--stages", "1"], launcher="mpirun", check=False)
    output = refused.stdout + refused.stderr
    assert f"{part} is truncated" in output and "falling back to the previous checkpoint" in output
    assert "was written by 2 pipeline stages x 1 data replica but this job is 1 pipeline stage x 2 data " \
           "replicas" in output
    assert refused.returncode != 0


def test_resuming_with_more_replicas_reshards_the_rest_of_the_epoch(tmp_path):
    args = ["--epochs", "2", "--every-n-steps", "4", "--checkpoint-dir", str(tmp_path)]
    crashed = run_workers(TRAIN, [*args, "--die-at-step", "14"], launcher="mpirun", check=False)
    assert crashed.returncode != 0
    resumed = run_workers(TRAIN, [*args, "--resume"], np=4, launcher="mpirun")
    output = resumed.stdout + resumed.stderr
    assert "checkpoint was written by 1 data-parallel replica(s), resuming on 2: re-sharding the data" in output
    ranks = results(resumed)
    assert sorted(ranks) == [0, 1, 2, 3]
    # 2 stages x 1 replica saved at step 12 (192 samples of epoch 0); 2 x 2 finish that epoch, then one more.
    expected = 12 + steps_per_epoch(300, 2, 16, 12 * 16) + steps_per_epoch(300, 2, 16)
    by_stage: dict[int, list[dict]] = {}
    for rank in ranks.values():
        assert rank["global_step"] == expected, rank["rank"]
        by_stage.setdefault(rank["stage"], []).append(rank)
    for replicas in by_stage.values():
        assert len(replicas) == 2 and replicas[0]["params"] == replicas[1]["params"], "stage replicas differ"


def test_a_nan_loss_on_the_last_stage_stops_every_stage_at_that_step_and_predict_still_works():
    ranks = results(run_workers(TRAIN, ["--epochs", "2", "--nan-at-step", "4", "--predict"], np=4,
                                launcher="mpirun"))
    assert sorted(ranks) == [0, 1, 2, 3]
    for r in ranks.values():
        assert r["global_step"] == 4, r
        # Ranks 2 and 3 hold the last stage: the highest of them is named.
        assert "non-finite loss on rank 3 at step 4; that step was not applied" in r["stop_reason"]
        assert all(math.isfinite(v) for v in r["params"]), "the NaN step must not reach any stage's weights"
        assert r["predicted"] == ranks[0]["predicted"] and len(r["predicted"]) == 100


@pytest.mark.parametrize(("stopped", "waiting"), [(1, 0), (0, 1)], ids=["stage-1-stopped", "rank-0-stopped"])
def test_a_stopped_stage_ends_the_job_naming_the_wait(stopped, waiting):
    start = time.monotonic()
    proc = run_workers(TRAIN, ["--epochs", "3", "--stop-at-step", "5", "--die-rank", str(stopped)],
                       launcher="mpirun", check=False, timeout=120, env={TIMEOUT_ENV: "10"})
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0
    found = re.search(rf"\[hvdtrain rank {waiting}\] ERROR: stage {waiting} waiting for micro-batch \d's "
                      rf"(gradients|activations) from rank {stopped} has waited \d+ s", output)
    assert found, output[-4000:]
    assert time.monotonic() - start < 90


def test_losing_rank_0_ends_the_job_naming_it():
    start = time.monotonic()
    proc = hvdtrain("run", "-np", "2", str(TRAIN), "--epochs", "3", "--die-at-step", "5", "--die-rank", "0",
                    timeout=120)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 137, output[-4000:]
    assert re.search(r"process rank 0 with PID \d+ .*exited on signal 9", output, re.S), output[-4000:]
    assert time.monotonic() - start < 90


@pytest.mark.parametrize(("np", "schedule", "launcher"), [(2, "1f1b", "hvdtrain"), (4, "gpipe", "mpirun")])
def test_the_pipeline_example_learns_digits(np, schedule, launcher, tmp_path):
    args = ["--stages", "2", "--epochs", "6", "--schedule", schedule, "--no-progress", "--output-dir", str(tmp_path)]
    example = REPO / "examples" / "pipeline_digits.py"
    proc = hvdtrain("run", "-np", str(np), str(example), *args) if launcher == "hvdtrain" else \
        run_workers(example, args, np=np, launcher="mpirun")
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = re.search(rf"final val_accuracy=([0-9.]+) after 6 epochs on 2 pipeline stages x {np // 2} data "
                      "replica", proc.stdout)
    assert found and float(found[1]) >= 0.95, proc.stdout[-2000:]
    assert (tmp_path / "checkpoints").is_dir() and (tmp_path / "metrics.csv").is_file()


def test_a_gloo_launch_is_refused_naming_the_fix():
    proc = run_workers(TRAIN, ["--epochs", "1"], launcher="horovodrun", check=False, timeout=120)
    assert proc.returncode != 0
    assert "needs an MPI launch" in proc.stderr and "hvdtrain run --mpi" in proc.stderr
