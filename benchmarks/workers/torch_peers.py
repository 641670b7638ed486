"""The benchmark workload under the frameworks a user would pick instead: Lightning's Trainer, Accelerate.

Each runs at its defaults for CPU data parallelism: Lightning ``strategy="ddp"`` (its own DistributedSampler
over the loader), Accelerate's prepared model, optimizer and loader; both on gloo, launched by torchrun:
    python -m torch.distributed.run --nproc_per_node 2 benchmarks/workers/torch_peers.py --framework lightning

Every rank prints one ``BENCH_RESULT {json}`` line per model (``BENCH_UNAVAILABLE`` when the framework is
not installed: ``pip install -r requirements-bench.txt``).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks.common import (
    MOMENTUM,
    UNAVAILABLE_MARKER,
    ThroughputResult,
    WindowTimer,
    add_workload_args,
    emit,
    set_thread_env,
)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_workload_args(parser)
    parser.add_argument("--framework", choices=("lightning", "accelerate"), required=True)
    return parser.parse_args()


def lightning_fit(args: argparse.Namespace, name: str, timer: WindowTimer) -> list[float]:
    """Train ``name`` with Lightning until ``timer`` is done; returns the first and last loss."""
    import lightning as L
    import torch

    from benchmarks import torch_common as tc

    losses: list[float] = []

    class Module(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = tc.build_model(name)
            self.loss_fn = torch.nn.CrossEntropyLoss()

        def training_step(self, batch: Any, index: int) -> Any:
            return self.loss_fn(self.net(batch[0]), batch[1])

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=args.lr, momentum=MOMENTUM)

    class Timer(L.Callback):
        def on_train_start(self, trainer: Any, module: Any) -> None:
            timer.begin()

        def on_train_batch_end(self, trainer: Any, module: Any, outputs: Any, batch: Any, index: int) -> None:
            if timer.step == 0 or timer.step + 1 == timer.total_steps:
                losses.append(float(outputs["loss"]))
            if timer.tick():
                trainer.should_stop = True

    world = int(os.environ["WORLD_SIZE"])
    data = tc.dataset(name, args.samples_per_rank, world, args.seed)
    loader = torch.utils.data.DataLoader(data, batch_size=args.batch_size, shuffle=True, drop_last=True)
    trainer = L.Trainer(accelerator="cpu", devices=world, strategy="ddp", max_epochs=-1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[Timer()])
    trainer.fit(Module(), loader)
    return losses


def accelerate_fit(args: argparse.Namespace, name: str, timer: WindowTimer) -> list[float]:
    """Train ``name`` with Accelerate's loop until ``timer`` is done; returns the first and last loss."""
    import torch
    from accelerate import Accelerator

    from benchmarks import torch_common as tc

    accelerator = Accelerator(cpu=True)
    model = tc.build_model(name)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=MOMENTUM)
    data = tc.dataset(name, args.samples_per_rank, accelerator.num_processes, args.seed)
    loader = torch.utils.data.DataLoader(data, batch_size=args.batch_size, shuffle=True, drop_last=True)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    loss_fn = torch.nn.CrossEntropyLoss()
    losses: list[float] = []
    timer.begin()
    while not timer.done:
        for x, y in loader:
            optimizer.zero_grad()
            loss = loss_fn(model(x), y)
            accelerator.backward(loss)
            optimizer.step()
            if timer.step == 0 or timer.step + 1 == timer.total_steps:
                losses.append(loss.item())
            if timer.tick():
                break
    return losses


def main() -> None:
    args = parse_args()
    set_thread_env(args.threads)
    import torch

    from benchmarks import torch_common as tc

    fit = lightning_fit if args.framework == "lightning" else accelerate_fit
    for name in args.models:
        tc.setup_threads(args.threads, args.seed)
        timer = WindowTimer(args.warmup, args.steps, args.repeats)
        try:
            losses = fit(args, name, timer) or [float("nan")]
        except ImportError as error:
            print(f"{UNAVAILABLE_MARKER}{error} (pip install -r requirements-bench.txt)", flush=True)
            return
        emit(ThroughputResult(
            variant=args.variant or args.framework, model=name, rank=int(os.environ["RANK"]),
            size=int(os.environ["WORLD_SIZE"]), batch_size=args.batch_size, threads=torch.get_num_threads(),
            warmup=args.warmup, steps=args.steps, window_seconds=timer.window_seconds(), window_marks=timer.marks,
            loss_first=losses[0], loss_last=losses[-1]).to_dict())


if __name__ == "__main__":
    main()
