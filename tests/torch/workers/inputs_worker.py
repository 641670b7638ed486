"""Input pipelines and custom steps under real Horovod workers; reports per rank via tests.launch.report.

Modes:
    uneven: an IterableDataset yielding 7 batches on rank 0 and 4 on rank 1.
    dict: dict batches and a custom training_step, then the same training by a hand-written Horovod loop.
"""
from __future__ import annotations

import argparse
import time

import horovod.torch as hvd
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, IterableDataset

import hvdtrain.torch as ht
from tests.launch import report
from tests.probes import Recorder, make_data


class UnevenStream(IterableDataset):
    """``batches * 8`` rows: a rank's own stream, of a length of its own (batched by the Trainer)."""

    def __init__(self, batches: int, seed: int) -> None:
        self.batches, self.seed = batches, seed

    def __iter__(self):
        x, y = (torch.from_numpy(a) for a in make_data(self.seed, 8 * self.batches))
        yield from zip(x, y)


class DictSamples(Dataset):
    """Samples as dicts of two inputs and a target."""

    def __init__(self, n: int = 320) -> None:
        x, self.y = (torch.from_numpy(a) for a in make_data(3, n))
        self.a, self.b = x[:, :6], x[:, 6:]

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"a": self.a[i], "b": self.b[i], "y": self.y[i]}


class TwoInputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.head = nn.Linear(6, 8), nn.Linear(4, 8), nn.Linear(8, 2)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.a(a) + self.b(b)))


def two_losses(model: nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Cross-entropy plus a small L2 term on the head: the loss and both parts, to log."""
    ce = nn.functional.cross_entropy(model(batch["a"], batch["b"]), batch["y"])
    l2 = 1e-3 * model.head.weight.square().sum()
    return {"loss": ce + l2, "ce": ce, "l2": l2}


def uneven(backend, epochs: int, accumulation: int) -> dict:
    torch.manual_seed(0)
    model = nn.Linear(10, 2)
    recorder = Recorder()
    trainer = ht.Trainer(model, torch.optim.SGD(model.parameters(), lr=0.05), nn.functional.cross_entropy,
                         UnevenStream(7 if backend.rank == 0 else 4, backend.rank), batch_size=8,
                         epochs=epochs, backward_passes_per_step=accumulation, callbacks=[recorder], progress=False)
    started = time.monotonic()
    history = trainer.fit()
    return {"steps": recorder.steps, "global_step": trainer.ctx.global_step, "seconds": time.monotonic() - started,
            "history": history, "params": [p.tolist() for p in model.parameters()]}


def dict_batches(backend, epochs: int) -> dict:
    data, lr, batch = DictSamples(), 0.05, 16
    torch.manual_seed(0)
    model = TwoInputs()
    trainer = ht.Trainer(model, torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9), train_data=data,
                         training_step=lambda b: two_losses(model, b), batch_size=batch, epochs=epochs, seed=5,
                         progress=False)
    history = trainer.fit()
    torch.manual_seed(0)
    reference = TwoInputs()
    hvd.broadcast_parameters(reference.state_dict(), root_rank=0)
    optimizer = hvd.DistributedOptimizer(torch.optim.SGD(reference.parameters(), lr=lr * hvd.size(), momentum=0.9),
                                         named_parameters=reference.named_parameters())
    sampler = ht.DistributedBatchSampler(len(data), hvd.rank(), hvd.size(), batch, shuffle=True, seed=5)
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        for b in DataLoader(data, batch_sampler=sampler):
            optimizer.zero_grad()
            two_losses(reference, b)["loss"].backward()
            optimizer.step()
    return {"params": [p.tolist() for p in model.parameters()], "history": history,
            "reference": [p.tolist() for p in reference.parameters()]}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["uneven", "dict"])
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--accumulation", type=int, default=1)
    args = p.parse_args()
    backend = ht.init()
    payload = uneven(backend, args.epochs, args.accumulation) if args.mode == "uneven" else \
        dict_batches(backend, args.epochs)
    report({"rank": backend.rank, **payload})


if __name__ == "__main__":
    main()
