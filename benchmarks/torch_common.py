"""PyTorch models, data and the training loop shared by the PyTorch workers."""
from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from benchmarks.common import (
    FEATURES,
    IMAGE_SIDE,
    NUM_CLASSES,
    PhaseClock,
    WindowTimer,
    is_conv,
    synthetic_data,
)


def build_model(name: str) -> nn.Module:
    """The benchmark model called ``name`` (see ``benchmarks.common.MODELS``)."""
    if name == "mlp":
        return _mlp(2048)
    if name == "tiny-mlp":
        return _mlp(64)
    if name == "cnn":
        return _cnn(32, 64, 128)
    if name == "tiny-cnn":
        return _cnn(4, 8, 16)
    raise ValueError(f"unknown model {name!r}")


def _mlp(hidden: int) -> nn.Module:
    return nn.Sequential(
        nn.Linear(FEATURES, hidden), nn.ReLU(),
        nn.Linear(hidden, hidden), nn.ReLU(),
        nn.Linear(hidden, NUM_CLASSES),
    )


def _cnn(c1: int, c2: int, hidden: int) -> nn.Module:
    side = IMAGE_SIDE // 4
    return nn.Sequential(
        nn.Conv2d(1, c1, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(c1, c2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(c2 * side * side, hidden), nn.ReLU(),
        nn.Linear(hidden, NUM_CLASSES),
    )


def dataset(model: str, samples_per_rank: int, size: int, seed: int) -> TensorDataset:
    """The global synthetic data set for a job of ``size`` ranks."""
    x, y = synthetic_data(samples_per_rank * size, seed)
    inputs = torch.from_numpy(x)
    if is_conv(model):
        inputs = inputs.view(-1, 1, IMAGE_SIDE, IMAGE_SIDE)
    return TensorDataset(inputs, torch.from_numpy(y))


def loader(data: TensorDataset, batch_size: int, rank: int, size: int, seed: int) -> DataLoader:
    """The standard per-rank loader: a DistributedSampler over the data set."""
    sampler = DistributedSampler(data, num_replicas=size, rank=rank, shuffle=True, seed=seed)
    return DataLoader(data, batch_size=batch_size, sampler=sampler, drop_last=True)


def endless(data_loader: DataLoader) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Batches of ``data_loader``, epoch after epoch (reshuffled each epoch)."""
    epoch = 0
    while True:
        data_loader.sampler.set_epoch(epoch)
        yield from data_loader
        epoch += 1


def setup_threads(threads: int, seed: int) -> None:
    """One intra-op thread per worker by default, and a fixed model seed."""
    torch.set_num_threads(threads)
    torch.manual_seed(seed)


def train(model: nn.Module, optimizer: torch.optim.Optimizer, batches: Iterator,
          timer: WindowTimer, clock: PhaseClock,
          synchronize: Callable[[], None] | None = None,
          step: Callable[[], None] | None = None,
          after_step: Callable[[], None] | None = None) -> tuple[float, float]:
    """The benchmark training loop; runs ``timer.total_steps`` steps.

    Args:
        model: the (possibly wrapped) model.
        optimizer: the (possibly distributed) optimizer.
        batches: an endless batch iterator.
        timer: marks the warmup and the timed windows.
        clock: charges each phase of a step (data, fwd_bwd, allreduce_wait, step).
        synchronize: waits for gradient allreduces (Horovod), timed separately.
        step: the optimizer step; ``optimizer.step`` when None.
        after_step: called after every step (e.g. to pass a barrier).

    Returns:
        The loss of the first and of the last step.
    """
    loss_fn = nn.CrossEntropyLoss()
    step = step or optimizer.step
    first = last = float("nan")
    timer.begin()
    clock.enabled = timer.timing
    clock.reset()
    while not timer.done:
        x, y = next(batches)
        clock.lap("data")
        optimizer.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        clock.lap("fwd_bwd")
        if synchronize is not None:
            synchronize()
            clock.lap("allreduce_wait")
        step()
        clock.lap("step")
        if timer.step == 0:
            first = loss.item()
        timer.tick()
        if after_step is not None:
            after_step()
        clock.enabled = timer.timing
        clock.reset()
    last = loss.item()
    return first, last
