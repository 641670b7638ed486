"""Per-step cost of a training loop on a tiny model: hvdtrain's Trainer, a hand-written loop, Lightning, Accelerate.

The model (32-32-10, batch 32) is so small that the step time is mostly the loop's own Python: what a
framework adds is what is measured. Every loop gets the same in-memory data, indexed a batch at a time.

Launch (``--comm`` says how the ranks talk):
    python benchmarks/workers/overhead_torch.py --loop hvdtrain --comm none        (one process, serial backend)
    horovodrun -np 2 --gloo python benchmarks/workers/overhead_torch.py --loop hand --comm hvd
    python -m torch.distributed.run --nproc_per_node 2 benchmarks/workers/overhead_torch.py --loop lightning \
        --comm ddp

Every rank prints one ``BENCH_RESULT {json}`` line with the microseconds per step of each timed epoch.
"""
from __future__ import annotations

import argparse
import gc
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks.common import (
    NUM_CLASSES,
    TINY_FEATURES,
    TINY_HIDDEN,
    UNAVAILABLE_MARKER,
    add_overhead_args,
    emit,
    import_hvdtrain_from_compared_checkout,
    overhead_result,
    set_thread_env,
)

import_hvdtrain_from_compared_checkout()

LOOPS = ("hand", "hvdtrain", "lightning", "accelerate")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loop", choices=LOOPS, required=True)
    parser.add_argument("--comm", choices=("none", "hvd", "ddp"), required=True,
                        help="none: one process; hvd: Horovod (hand, hvdtrain); ddp: torch.distributed on gloo")
    add_overhead_args(parser)
    return parser.parse_args()


def world(comm: str) -> tuple[int, int]:
    """(rank, size), after starting the communication ``comm`` names."""
    if comm == "hvd":
        import horovod.torch as hvd

        hvd.init()
        return hvd.rank(), hvd.size()
    if comm == "ddp":
        return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    return 0, 1


def tiny_problem(samples: int, seed: int) -> tuple[Any, Any, Any]:
    """(model, inputs, targets): the same model and data in every loop; labels from a fixed linear teacher."""
    import torch

    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(TINY_FEATURES, TINY_HIDDEN), torch.nn.ReLU(),
                                torch.nn.Linear(TINY_HIDDEN, NUM_CLASSES))
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randn(samples, TINY_FEATURES, generator=generator)
    targets = (inputs @ torch.randn(TINY_FEATURES, NUM_CLASSES, generator=generator)).argmax(1)
    return model, inputs, targets


class EpochClock:
    """Start and end times of each epoch."""

    def __init__(self) -> None:
        self.starts: list[float] = []
        self.ends: list[float] = []

    def start(self) -> None:
        self.starts.append(time.perf_counter())

    def end(self) -> None:
        self.ends.append(time.perf_counter())

    def seconds(self) -> list[float]:
        return [end - start for start, end in zip(self.starts, self.ends)]


def batch_loader(inputs: Any, targets: Any, batch_size: int, seed: int) -> Any:
    """A DataLoader yielding whole shuffled batches by one index each (no per-sample collate)."""
    import torch
    from torch.utils.data import BatchSampler, DataLoader, RandomSampler, TensorDataset

    data = TensorDataset(inputs, targets)
    order = RandomSampler(data, generator=torch.Generator().manual_seed(seed))
    return DataLoader(data, sampler=BatchSampler(order, batch_size, drop_last=True), batch_size=None)


def hand_loop(args: argparse.Namespace, inputs: Any, targets: Any, model: Any, clock: EpochClock) -> None:
    """The loop a user writes by hand: shuffle, index, forward, backward, step; the loss summed on the device."""
    import torch

    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    if args.comm == "hvd":
        import horovod.torch as hvd

        optimizer = hvd.DistributedOptimizer(optimizer, named_parameters=model.named_parameters())
        hvd.broadcast_parameters(model.state_dict(), root_rank=0)
    elif args.comm == "ddp":
        torch.distributed.init_process_group("gloo")
        model = torch.nn.parallel.DistributedDataParallel(model)
    loss_fn = torch.nn.CrossEntropyLoss()
    generator = torch.Generator().manual_seed(args.seed)
    steps = len(inputs) // args.batch_size
    for _ in range(args.warmup_epochs + args.epochs):
        clock.start()
        order = torch.randperm(len(inputs), generator=generator)
        total = torch.zeros(())
        for step in range(steps):
            index = order[step * args.batch_size:(step + 1) * args.batch_size]
            optimizer.zero_grad()
            loss = loss_fn(model(inputs[index]), targets[index])
            loss.backward()
            optimizer.step()
            total += loss.detach()
        total.item()
        clock.end()


def hvdtrain_loop(args: argparse.Namespace, inputs: Any, targets: Any, model: Any, clock: EpochClock) -> None:
    """hvdtrain's Trainer as a user calls it, with its defaults (loss logged, non-finite check on)."""
    import torch

    import hvdtrain.torch as ht
    from hvdtrain.callbacks import Callback

    class Clock(Callback):
        def on_epoch_begin(self, ctx: Any) -> None:
            clock.start()

        def on_epoch_end(self, ctx: Any) -> None:
            clock.end()

    backend = ht.SerialBackend() if args.comm == "none" else None
    if backend is None:
        ht.init(args.threads)
    ht.Trainer(model, torch.optim.SGD(model.parameters(), lr=0.05), torch.nn.CrossEntropyLoss(),
               train_data=(inputs, targets), batch_size=args.batch_size, epochs=args.warmup_epochs + args.epochs,
               callbacks=[Clock()], progress=False, seed=args.seed, backend=backend).fit()


def lightning_loop(args: argparse.Namespace, inputs: Any, targets: Any, model: Any, clock: EpochClock) -> None:
    """Lightning's Trainer with its loss logged per epoch, on the CPU (DDP on gloo under torchrun)."""
    import lightning as L
    import torch

    class Tiny(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = model
            self.loss_fn = torch.nn.CrossEntropyLoss()

        def training_step(self, batch: Any, index: int) -> Any:
            loss = self.loss_fn(self.net(batch[0]), batch[1])
            self.log("loss", loss, on_step=False, on_epoch=True)
            return loss

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=0.05)

    class Clock(L.Callback):
        def on_train_epoch_start(self, trainer: Any, module: Any) -> None:
            clock.start()

        def on_train_epoch_end(self, trainer: Any, module: Any) -> None:
            clock.end()

    distributed = args.comm == "ddp"
    trainer = L.Trainer(accelerator="cpu", devices=int(os.environ["WORLD_SIZE"]) if distributed else 1,
                        strategy="ddp" if distributed else "auto", max_epochs=args.warmup_epochs + args.epochs,
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, use_distributed_sampler=False, callbacks=[Clock()])
    trainer.fit(Tiny(), batch_loader(inputs, targets, args.batch_size, args.seed))


def accelerate_loop(args: argparse.Namespace, inputs: Any, targets: Any, model: Any, clock: EpochClock) -> None:
    """Accelerate's loop: prepared model, optimizer and loader, ``accelerator.backward``, the loss gathered."""
    import torch
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=True)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    loader = batch_loader(inputs, targets, args.batch_size, args.seed)
    model, optimizer = accelerator.prepare(model, optimizer)
    loss_fn = torch.nn.CrossEntropyLoss()
    for _ in range(args.warmup_epochs + args.epochs):
        clock.start()
        total = torch.zeros(())
        for x, y in loader:
            optimizer.zero_grad()
            loss = loss_fn(model(x), y)
            accelerator.backward(loss)
            optimizer.step()
            total += loss.detach()
        accelerator.reduce(total, "mean").item()
        clock.end()


RUNNERS: dict[str, Callable[..., None]] = {"hand": hand_loop, "hvdtrain": hvdtrain_loop,
                                           "lightning": lightning_loop, "accelerate": accelerate_loop}


def main() -> None:
    args = parse_args()
    set_thread_env(args.threads)
    import torch

    torch.set_num_threads(args.threads)
    try:
        rank, size = world(args.comm)
    except ImportError as error:
        print(f"{UNAVAILABLE_MARKER}{error}", flush=True)
        return
    # The whole data set on hvdtrain's path (it shards it), each rank's own shard on the others'.
    samples = args.samples_per_rank * (size if args.loop == "hvdtrain" else 1)
    model, inputs, targets = tiny_problem(samples, args.seed + (0 if args.loop == "hvdtrain" else rank))
    clock = EpochClock()
    try:
        RUNNERS[args.loop](args, inputs, targets, model, clock)
    except ImportError as error:  # a peer framework not installed: pip install -r requirements-bench.txt
        print(f"{UNAVAILABLE_MARKER}{error} (pip install -r requirements-bench.txt)", flush=True)
        return
    if args.loop == "hand" and args.comm == "ddp":
        # Leave together (a rank exiting while its peer is connected aborts in gloo), once the DDP model is
        # gone: freeing it after destroy_process_group deadlocks in gloo's destructor.
        gc.collect()
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    emit(overhead_result(args, rank, size, clock.seconds()))


if __name__ == "__main__":
    main()
