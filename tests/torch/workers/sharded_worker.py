"""Train one small model several ways in one job and report each way's final weights and optimizer state.

Usage: sharded_worker.py JOBS_JSON. Each job is {"name", "stage", "precision", "epochs", "checkpoint_dir",
"resume"}; each trains a fresh model (same seed) with AdamW, warmup, clipping and two backward passes per
step, through the Trainer, with shard_optimizer_state=stage. Rank 0 reports every job's weights and its
unsharded optimizer state (the state_dict); every rank reports the bytes of optimizer state it holds.
"""
from __future__ import annotations

import json
import sys

import torch
from torch import nn

import hvdtrain.torch as ht
from tests.launch import report

backend = ht.init()
torch.manual_seed(0)
# 120 samples of 9 features, 4 classes; 7 + 13 + 5 feature widths give buckets that 2 and 3 do not divide.
x, y = torch.randn(120, 9), torch.randint(0, 4, (120,))


class Scaled(nn.Module):
    """The MLP's output times a learned scalar: with "scalar", a group of one element, first (ranks 1 and 2 of
    three then hold an empty slice of its bucket)."""

    def __init__(self, body: nn.Module) -> None:
        super().__init__()
        self.scale, self.body = nn.Parameter(torch.ones(())), body

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.body(inputs) * self.scale


def model(job: dict) -> nn.Module:
    torch.manual_seed(1)
    body = nn.Sequential(nn.Linear(9, 13), nn.LayerNorm(13), nn.ReLU(), nn.Linear(13, 7), nn.Tanh(), nn.Linear(7, 4))
    if job.get("frozen"):
        body[3].requires_grad_(False)  # frozen parameters stay out of the shards, but in the state's numbering
    return Scaled(body) if job.get("scalar") else body


def train(job: dict) -> dict:
    net = model(job)
    weights = [p for n, p in net.named_parameters() if p.dim() > 1]
    others = [p for n, p in net.named_parameters() if p.dim() == 1]
    groups = [{"params": weights}, {"params": others, "weight_decay": 0.0}]
    if job.get("scalar"):
        groups.insert(0, {"params": [net.scale], "weight_decay": 0.0})
    optimizer = torch.optim.AdamW(groups, lr=0.003)
    # A scheduler built on the optimizer before the Trainer shards it (as users write it).
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=5, gamma=0.5) if job.get("scheduler") else None
    trainer = ht.Trainer(net, optimizer, nn.functional.cross_entropy, train_data=(x, y), batch_size=5,
                         epochs=job["epochs"], progress=False, warmup_epochs=1, grad_clip_norm=0.3,
                         backward_passes_per_step=2, shard_optimizer_state=job["stage"], lr_scheduler=scheduler,
                         precision=job.get("precision", "32"), checkpoint_dir=job.get("checkpoint_dir"),
                         resume=job.get("resume", False), seed=3)
    if job.get("init_scale"):  # float16 steps that overflow first, and are skipped on every rank alike
        trainer.precision.scaler = torch.amp.GradScaler("cpu", init_scale=job["init_scale"])
    trainer.fit()
    held = sum(t.numel() * t.element_size() for state in trainer.optimizer.state.values()
               for t in state.values() if torch.is_tensor(t) and t.dim() > 0)
    state = trainer.adapter.state_dict(trainer.model, trainer.optimizer)["optimizer"]
    weights = [p.detach().double().reshape(-1).tolist() for p in net.parameters()]
    moments = {str(k): {key: v.double().reshape(-1).tolist() for key, v in s.items() if key != "step"}
               for k, s in state["state"].items()}
    scale = trainer.precision.scaler.get_scale() if trainer.precision.scaler else None
    return {"weights": weights, "state": moments, "held_bytes": held, "loss_scale": scale,
            "steps": [float(s["step"]) for s in state["state"].values()]}


jobs = json.loads(sys.argv[1])
outcome = {job["name"]: train(job) for job in jobs}
if backend.rank != 0:  # the others report what they hold
    outcome = {name: {"held_bytes": each["held_bytes"]} for name, each in outcome.items()}
report({"rank": backend.rank, "jobs": outcome})
