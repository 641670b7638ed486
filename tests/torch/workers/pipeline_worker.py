"""One pipeline step must equal one step of the unsplit model on the whole batch."""
from __future__ import annotations

import sys
from pathlib import Path

import torch
from mpi4py import MPI
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "examples"))
from model_parallel_digits import build_model, split

from hvdtrain.torch.pipeline import PipelineStage
from tests.launch import report

comm = MPI.COMM_WORLD
rank, size = comm.Get_rank(), comm.Get_size()
model = build_model(3).double()
reference = build_model(3).double()
stage_module = split(model, rank, size)
stage = PipelineStage(stage_module, nn.functional.cross_entropy, micro_batches=3, comm=comm)
gen = torch.Generator().manual_seed(1)
x = torch.randn(20, 64, generator=gen, dtype=torch.float64)
y = torch.randint(0, 10, (20,), generator=gen)

loss = stage.train_step(x, y, torch.optim.SGD(stage_module.parameters(), lr=0.5))
ref_opt = torch.optim.SGD(reference.parameters(), lr=0.5)
ref_loss = nn.functional.cross_entropy(reference(x), y)
ref_loss.backward()
ref_opt.step()
mine = torch.cat([p.reshape(-1) for p in stage_module.parameters()])
theirs = torch.cat([p.reshape(-1) for p in split(reference, rank, size).parameters()])
report({"rank": rank, "param_error": (mine - theirs).abs().max().item(),
                              "loss": loss, "ref_loss": ref_loss.item(), "params": mine.numel()})
