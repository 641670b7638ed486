"""Pipeline training in the Trainer must equal the unsplit model trained in one process on the same global batches.

Usage: pipeline_worker.py STAGES CONFIG...
CONFIG = schedule:micro_batches:accumulation:clip[:overflow_step] (clip 0: none). With overflow_step the
job trains in "16-mixed" (the float64 model is left alone by autocast, so the loss scale is all that
changes) and the first layer's gradient is made infinite at that optimizer step: only the first stage sees it.
Each rank reports, per config, the largest difference between its stage's weights and the same layers of
the reference, the training loss both logged, how many micro-batches' activations it held at once, and
the loss scale. PIPELINE_DEVICE (say cuda:0) puts every stage on that device, the reference staying on the CPU.
"""
from __future__ import annotations

import os
import sys

import torch
from torch import nn

import hvdtrain.torch as ht
from hvdtrain.torch.pipeline import split_sequential
from tests.launch import report

stages = int(sys.argv[1])
if os.environ.get("PIPELINE_DEVICE"):
    # Every stage on the one GPU of the machine lent for the GPU suite: hvdtrain refuses more workers per node
    # than GPUs, so this test places its ranks itself.
    import hvdtrain.torch.backend

    def place_every_rank_on_one_device(*_) -> None:
        device = torch.device(os.environ["PIPELINE_DEVICE"])
        if device.type == "cuda":
            torch.cuda.set_device(device)

    hvdtrain.torch.backend.pin_gpu = place_every_rank_on_one_device
backend = ht.init(pipeline=stages)
layout = backend.layout

generator = torch.Generator().manual_seed(3)
x = torch.randn(90, 8, generator=generator, dtype=torch.float64)
y = torch.randint(0, 3, (90,), generator=generator)


def build() -> nn.Sequential:
    torch.manual_seed(7)
    return nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 12), nn.Tanh(),
                         nn.Linear(12, 3)).double()


def train(model: nn.Sequential, config: str, **where) -> tuple[list[dict], ht.Trainer]:
    schedule, micro, accumulation, clip, *overflow = config.split(":")
    trainer = ht.Trainer(model, torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.9), nn.functional.cross_entropy,
                         (x, y), epochs=2, backward_passes_per_step=int(accumulation),
                         grad_clip_norm=float(clip) or None, scale_lr=False, progress=False,
                         micro_batches=int(micro), pipeline_schedule=schedule,
                         precision="16-mixed" if overflow else "32", **where)
    if overflow:
        at_step = int(overflow[0])
        model[0].weight.register_hook(
            lambda grad: grad * float("inf") if trainer.ctx.global_step + 1 == at_step else grad)
    return trainer.fit(), trainer


def loss_scale(trainer: ht.Trainer) -> float | None:
    return trainer.precision.scaler.get_scale() if trainer.precision.scaler else None


on_device = {"device": os.environ["PIPELINE_DEVICE"]} if os.environ.get("PIPELINE_DEVICE") else {}
results = {}
for config in sys.argv[2:]:
    pipeline_history, trainer = train(build(), config, batch_size=8, **on_device)
    reference = build()
    reference_history, unsplit = train(reference, config, batch_size=8 * layout.data_size,
                                       backend=ht.SerialBackend(), device="cpu")
    mine = dict(split_sequential(reference, stages)[layout.stage].named_parameters())
    error = max((p.detach().cpu() - mine[name].detach()).abs().max().item()
                for name, p in trainer.model.named_parameters())
    results[config] = {"weight_error": error, "loss": pipeline_history[-1]["loss"],
                       "ref_loss": reference_history[-1]["loss"], "peak_saved": trainer.pipeline.peak_saved,
                       "scale": loss_scale(trainer), "ref_scale": loss_scale(unsplit),
                       "device": str(trainer.device), "transfer": trainer.pipeline.transfer.mode}
import horovod.torch as hvd  # noqa: E402

report({"rank": layout.rank, "stage": layout.stage, "replica": layout.data_rank, "results": results,
        "horovod_world": [hvd.rank(), hvd.size()], "local": [backend.local_rank, backend.local_size],
        # Objects cross the world as Horovod sends them: a function (a callback's state may hold one) too.
        "from_root": backend.broadcast_object(lambda: layout.rank, 0)(),
        "gathered": [f() for f in backend.allgather_object(lambda: layout.stage)]})
