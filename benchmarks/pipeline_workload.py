"""The pipeline benchmark's workload, the same for hvdtrain and torch.distributed.pipelining: an MLP of
four linear layers cut into two stages, float32 on the CPU, batches of random data."""
from __future__ import annotations

import argparse
import time

from benchmarks.common import emit


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--schedule", choices=("1f1b", "gpipe"), default="1f1b")
    p.add_argument("--micro-batches", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=128, help="the global batch of one pipeline step")
    p.add_argument("--width", type=int, default=1024)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--steps", type=int, default=40)
    return p


def stage_layers(stage: int, stages: int, width: int):
    """This stage's layers: the MLP 256 -> width -> width -> width -> 10, cut into ``stages`` runs."""
    from torch import nn

    torch_layers = [nn.Linear(256, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(),
                    nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 10)]
    first, last = stage * len(torch_layers) // stages, (stage + 1) * len(torch_layers) // stages
    return nn.Sequential(*torch_layers[first:last])


def data(steps: int, batch_size: int):
    import torch

    generator = torch.Generator().manual_seed(0)
    n = steps * batch_size
    return torch.randn(n, 256, generator=generator), torch.randint(0, 10, (n,), generator=generator)


class StepClock:
    """Times the steps after the warmup ones."""

    def __init__(self, warmup: int) -> None:
        self.warmup, self.done, self.start = warmup, 0, None

    def step_done(self) -> None:
        self.done += 1
        if self.done == self.warmup:
            self.start = time.perf_counter()

    def emit(self, rank: int, framework: str, args: argparse.Namespace) -> None:
        seconds = time.perf_counter() - self.start
        timed = self.done - self.warmup
        emit({"rank": rank, "framework": framework, "schedule": args.schedule, "micro_batches": args.micro_batches,
              "batch_size": args.batch_size, "steps": timed, "seconds": seconds,
              "samples_per_sec": timed * args.batch_size / seconds})
