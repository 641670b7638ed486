"""Sharded optimizer state (ZeRO 1 and 2) under real launchers: the weights of plain data parallelism, 1/N of
its optimizer state per rank, and checkpoints that resume at another replica count, sharded or not."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from torch import nn

import hvdtrain.torch as ht
from hvdtrain.torch.sharded_optimizer import shard_ranges
from tests.launch import results, run_workers

WORKER = Path(__file__).parent / "workers" / "sharded_worker.py"


def largest_difference(a, b) -> float:
    return max(abs(u - v) for x, y in zip(a, b, strict=True) for u, v in zip(x, y, strict=True))


def state_difference(a, b) -> float:
    assert a and a.keys() == b.keys()  # some state, for the same parameters
    return max(largest_difference([a[k][key]], [b[k][key]]) for k in a for key in a[k])


@pytest.mark.parallel
@pytest.mark.parametrize("np", [2, 3])
def test_sharded_stages_train_the_weights_of_plain_data_parallelism_with_1_over_n_of_the_state(np):
    jobs = [{"name": f"stage{s}", "stage": s, "epochs": 2} for s in (0, 1, 2)]
    jobs += [{"name": f"fp16 stage{s}", "stage": s, "epochs": 2, "precision": "16-mixed"} for s in (0, 2)]
    # A scheduler built before sharding; a scalar group first, in float16 overflowing at first; frozen layers.
    jobs += [{"name": f"scheduler stage{s}", "stage": s, "epochs": 2, "scheduler": True} for s in (0, 1)]
    jobs += [{"name": f"overflow stage{s}", "stage": s, "epochs": 2, "precision": "16-mixed", "scalar": True,
              "init_scale": 2.0 ** 19} for s in (0, 1)]
    jobs += [{"name": f"frozen stage{s}", "stage": s, "epochs": 1, "frozen": True} for s in (0, 2)]
    ranks = results(run_workers(WORKER, [json.dumps(jobs)], np=np, timeout=300))
    assert sorted(ranks) == list(range(np))
    root = ranks[0]["jobs"]
    # 120 samples in batches of 5 per rank, two per step, two epochs: every run counts each of its steps once
    # (the initial broadcast takes no zero-gradient step, which would be AdamW's first step and decay).
    assert set(root["stage0"]["steps"]) == {2 * (120 // (5 * np) // 2)}
    pairs = [("stage1", "stage0"), ("stage2", "stage0"), ("fp16 stage2", "fp16 stage0"),
             ("scheduler stage1", "scheduler stage0"), ("overflow stage1", "overflow stage0"),
             ("frozen stage2", "frozen stage0")]
    for name, reference in pairs:
        assert largest_difference(root[name]["weights"], root[reference]["weights"]) < 1e-6, name
        assert state_difference(root[name]["state"], root[reference]["state"]) < 1e-6, name
        assert root[name]["steps"] == root[reference]["steps"]
    assert root["fp16 stage2"]["loss_scale"] == root["fp16 stage0"]["loss_scale"]
    assert root["overflow stage1"]["loss_scale"] == root["overflow stage0"]["loss_scale"] < 2.0 ** 19  # skipped
    assert largest_difference(root["scheduler stage0"]["weights"], root["stage0"]["weights"]) > 1e-6, "it scheduled"
    assert largest_difference(root["stage0"]["weights"], root["fp16 stage0"]["weights"]) > 1e-6, "fp16 ran"
    unsharded = root["stage0"]["held_bytes"]
    for name in ("stage1", "stage2"):
        held = [ranks[r]["jobs"][name]["held_bytes"] for r in range(np)]
        assert sum(held) == unsharded, (name, held)  # every element once, on one rank
        assert max(held) <= unsharded / np + 2 * 2 * 4, (name, held)  # 1/N, rounded up per bucket


@pytest.mark.parallel
def test_a_checkpoint_written_at_two_replicas_resumes_at_three_sharded_or_not(tmp_path):
    written = {name: tmp_path / name for name in ("sharded", "unsharded")}
    jobs = [{"name": name, "stage": int(name == "sharded"), "epochs": 2, "checkpoint_dir": str(path)}
            for name, path in written.items()]
    run_workers(WORKER, [json.dumps(jobs)], np=2, timeout=240)
    resumed = []
    for source in written:
        for stage in (0, 1):
            copy = tmp_path / f"{source}-to-stage{stage}"
            shutil.copytree(written[source], copy)
            resumed.append({"name": f"{source} -> stage {stage}", "stage": stage, "epochs": 4,
                            "checkpoint_dir": str(copy), "resume": True})
    root = results(run_workers(WORKER, [json.dumps(resumed)], np=3, timeout=300))[0]["jobs"]
    reference = root["unsharded -> stage 0"]  # the path plain resumes already prove
    for name in ("sharded -> stage 1", "sharded -> stage 0", "unsharded -> stage 1"):
        assert largest_difference(root[name]["weights"], reference["weights"]) < 1e-6, name
        assert state_difference(root[name]["state"], reference["state"]) < 1e-6, name


def test_shards_are_cut_as_horovods_reducescatter_cuts_them():
    assert shard_ranges(236, 3) == [(0, 79), (79, 79), (158, 78)]
    assert shard_ranges(2, 3) == [(0, 1), (1, 1), (2, 0)]


def _trainer(**options):
    model = nn.Linear(4, 2)
    return ht.Trainer(model, torch.optim.Adam(model.parameters()), nn.functional.cross_entropy,
                      train_data=(torch.randn(8, 4), torch.randint(0, 2, (8,))), progress=False,
                      backend=ht.SerialBackend(), **options)


@pytest.mark.parametrize(("options", "named"), [
    ({"shard_optimizer_state": 3}, "shard_optimizer_state must be 0 (off), 1"),
    ({"shard_optimizer_state": 1, "op": "adasum"}, "op='adasum' cannot be sharded"),
    ({"shard_optimizer_state": 2, "compression": "fp16"}, "compression='fp16' cannot be sharded"),
])
def test_a_sharding_misuse_is_named_with_its_fix(options, named):
    with pytest.raises(ValueError, match=re.escape(named)):
        _trainer(**options)


def test_several_optimizers_cannot_share_one_sharding():
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    optimizers = {"a": torch.optim.Adam(model[0].parameters()), "b": torch.optim.SGD(model[1].parameters(), lr=0.1)}
    with pytest.raises(ValueError, match=r"shards one optimizer, and this Trainer has 2 \(\['a', 'b'\]\)"):
        ht.Trainer(model, optimizers, training_step=lambda batch, opt: None, train_data=(torch.randn(8, 4),),
                   backend=ht.SerialBackend(), shard_optimizer_state=1)


def test_a_sharded_optimizer_state_loads_into_a_model_of_other_groups_with_a_clear_error():
    trainer = _trainer(shard_optimizer_state=1)
    other = nn.Linear(4, 2)
    state = torch.optim.Adam([{"params": [other.weight]}, {"params": [other.bias]}]).state_dict()
    with pytest.raises(ValueError, match=r"parameter groups of \[1, 1\] parameters, but this optimizer's hold \[2\]"):
        trainer.optimizer.load_state_dict(state)


def test_a_sharded_state_with_frozen_layers_loads_into_an_unsharded_optimizer_and_back():
    def frozen_model():
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))
        model[0].requires_grad_(False)
        return model

    plain_model, sharded_model = frozen_model(), frozen_model()
    plain = torch.optim.Adam(plain_model.parameters(), lr=0.01)
    sharded = ht.DistributedOptimizer(torch.optim.Adam(sharded_model.parameters(), lr=0.01), sharded_model,
                                      backend=ht.SerialBackend(), shard_optimizer_state=1, scale_lr=False)
    x = torch.randn(8, 4)
    for model, optimizer in ((plain_model, plain), (sharded_model, sharded)):
        model(x).square().sum().backward()
        optimizer.step()
    saved = sharded.state_dict()
    assert [g["params"] for g in saved["param_groups"]] == [g["params"] for g in plain.state_dict()["param_groups"]]
    plain.load_state_dict(saved)  # torch checks the groups' sizes: the frozen parameters are counted
    sharded.load_state_dict(plain.state_dict())
    assert torch.equal(sharded.state_dict()["state"][2]["exp_avg"], plain.state_dict()["state"][2]["exp_avg"])


def test_clip_grad_norm_clips_a_sharded_optimizers_slices_by_the_whole_norm():
    model = nn.Linear(4, 3)
    optimizer = ht.DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), model,
                                        backend=ht.SerialBackend(), shard_optimizer_state=1)
    (model(torch.randn(8, 4)).sum() * 100).backward()
    expected = torch.cat([p.grad.reshape(-1) for p in model.parameters()]).norm()
    norm = ht.clip_grad_norm(optimizer, model.parameters(), 1.0)
    assert float(norm) == pytest.approx(float(expected), rel=1e-6)
    clipped = torch.cat([p.grad.reshape(-1) for group in optimizer.param_groups for p in group["params"]])
    assert float(clipped.norm()) == pytest.approx(1.0, rel=1e-5)
