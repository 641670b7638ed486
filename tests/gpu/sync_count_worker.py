"""Counts the host synchronisations per optimizer step on the GPU: a raw Horovod loop against the Trainer.

``torch.cuda.set_sync_debug_mode("warn")`` warns at each torch operation that makes the host wait for the
GPU (an ``.item()``, a blocking copy between host and GPU; not ``torch.cuda.synchronize()`` or event
waits); the warnings are counted over the timed batches only, each with its fetch. At np=1 neither loop
allreduces. Reports {"control": one ``.item()``'s count, "raw": per step, "trainer": {precision: per step}}.
SYNC_COUNT_DEVICE=cpu runs the same loops on the CPU, counting nothing (a check of the script itself).
"""
from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import hvdtrain.torch as ht
from hvdtrain.callbacks import Callback
from tests.launch import report

WARMUP, STEPS, BATCH = 5, 20, 64
DEVICE = os.environ.get("SYNC_COUNT_DEVICE", "cuda")


def model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 10)).to(DEVICE)


class SyncCounter:
    """Counts torch's synchronisation warnings while ``counting``."""

    def __init__(self) -> None:
        self.count, self.counting = 0, False
        self._shown = warnings.showwarning
        warnings.showwarning = self._warned
        warnings.simplefilter("always")
        if DEVICE == "cuda":
            torch.cuda.set_sync_debug_mode("warn")

    def _warned(self, message, category, *rest) -> None:
        if "synchronizing" in str(message):
            self.count += self.counting
        else:
            self._shown(message, category, *rest)


def raw_horovod(counter: SyncCounter, x: torch.Tensor, y: torch.Tensor) -> float:
    import horovod.torch as hvd

    net = model()
    optimizer = hvd.DistributedOptimizer(torch.optim.SGD(net.parameters(), lr=0.01),
                                         named_parameters=net.named_parameters())
    for step in range(WARMUP + STEPS):
        counter.counting = step >= WARMUP
        rows = slice(step * BATCH, (step + 1) * BATCH)
        optimizer.zero_grad()
        nn.functional.cross_entropy(net(x[rows]), y[rows]).backward()
        optimizer.step()
    counter.counting = False
    return counter.count / STEPS


def trainer(counter: SyncCounter, x: torch.Tensor, y: torch.Tensor, precision: str) -> float:
    class Count(Callback):
        def on_batch_end(self, ctx) -> None:  # counts the next batch, its fetch included
            counter.counting = WARMUP <= ctx.global_step < WARMUP + STEPS

    counter.count = 0
    net = model()
    ht.Trainer(net, torch.optim.SGD(net.parameters(), lr=0.01), nn.functional.cross_entropy,
               (x.cpu(), y.cpu()), batch_size=BATCH, epochs=1, precision=precision,
               device=None if DEVICE == "cuda" else DEVICE,  # the default cuda:0 on the GPU, as users get it
               callbacks=[Count()], progress=False, scale_lr=False).fit()
    return counter.count / STEPS


def main() -> None:
    backend = ht.init()
    generator = torch.Generator().manual_seed(1)
    x = torch.randn((WARMUP + STEPS) * BATCH, 64, generator=generator).to(DEVICE)
    y = torch.randint(0, 10, ((WARMUP + STEPS) * BATCH,), generator=generator).to(DEVICE)
    counter = SyncCounter()
    counter.counting = True
    torch.ones((), device=DEVICE).item()
    control, counter.counting, counter.count = counter.count, False, 0
    raw = raw_horovod(counter, x, y)
    counter.count = 0
    per_precision = {precision: trainer(counter, x, y, precision) for precision in ("32", "bf16-mixed", "16-mixed")}
    report({"rank": backend.rank, "control": control, "raw": raw, "trainer": per_precision})


if __name__ == "__main__":
    main()
