"""Hand-written PyTorch training loop: raw Horovod, DDP, or no communication.

Launch:
    mpirun -np 2 python benchmarks/workers/torch_loop.py --comm hvd
    horovodrun -np 2 --gloo python benchmarks/workers/torch_loop.py --comm hvd
    python -m torch.distributed.run --nproc_per_node 2 benchmarks/workers/torch_loop.py --comm ddp
    BENCH_RANK=r BENCH_SIZE=n python benchmarks/workers/torch_loop.py --comm none   (one per rank)

Every rank prints one ``BENCH_RESULT {json}`` line per model.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks.common import (
    MOMENTUM,
    FileBarrier,
    PhaseClock,
    ThroughputResult,
    WindowTimer,
    add_workload_args,
    emit,
    env_world,
    set_thread_env,
)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_workload_args(parser)
    parser.add_argument("--comm", choices=("hvd", "ddp", "none"), required=True)
    parser.add_argument("--compression", choices=("none", "fp16"), default="none",
                        help="Horovod gradient compression")
    return parser.parse_args()


@dataclass
class Comm:
    """How gradients are shared; built once per process, applied to each model.

    Attributes:
        kind: "hvd", "ddp" or "none".
        rank: this worker's rank.
        size: number of workers.
        barrier: lines up independent processes ("none" only).
        info: settings echoed in the result.
    """

    kind: str
    rank: int
    size: int
    barrier: FileBarrier
    info: dict[str, Any] = field(default_factory=dict)
    compression: str = "none"


def init_comm(kind: str, compression: str) -> Comm:
    """Initialize Horovod, torch.distributed, or nothing."""
    if kind == "hvd":
        import horovod.torch as hvd

        hvd.init()
        info = {"horovod_controller": "mpi" if hvd.mpi_enabled() else "gloo", "compression": compression}
        return Comm(kind, hvd.rank(), hvd.size(), FileBarrier(None, 0, 1), info, compression)
    if kind == "ddp":
        import torch.distributed as dist

        dist.init_process_group("gloo")
        return Comm(kind, dist.get_rank(), dist.get_world_size(), FileBarrier(None, 0, 1))
    rank, size = env_world()
    return Comm(kind, rank, size, FileBarrier(os.environ.get("BENCH_BARRIER_DIR"), rank, size))


def wrap(comm: Comm, model: Any, optimizer: Any) -> tuple[Any, Any, Callable[[], None] | None, Callable[[], None]]:
    """``(model, optimizer, synchronize, step)`` for one model under ``comm``."""
    if comm.kind == "hvd":
        import horovod.torch as hvd

        codec = hvd.Compression.fp16 if comm.compression == "fp16" else hvd.Compression.none
        optimizer = hvd.DistributedOptimizer(optimizer, named_parameters=model.named_parameters(),
                                             compression=codec)
        hvd.broadcast_parameters(model.state_dict(), root_rank=0)
        hvd.broadcast_optimizer_state(optimizer, root_rank=0)

        def step() -> None:
            # synchronize() already waited for the allreduces; do not wait twice.
            with optimizer.skip_synchronize():
                optimizer.step()

        return model, optimizer, optimizer.synchronize, step
    if comm.kind == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        model = DistributedDataParallel(model)
    return model, optimizer, None, optimizer.step


def measure(args: argparse.Namespace, comm: Comm, name: str) -> dict[str, Any]:
    """Train ``name`` for the warmup and the timed windows; returns the result dict."""
    import torch

    from benchmarks import torch_common as tc

    tc.setup_threads(args.threads, args.seed)
    model = tc.build_model(name)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=MOMENTUM)
    model, optimizer, synchronize, step = wrap(comm, model, optimizer)
    data = tc.dataset(name, args.samples_per_rank, comm.size, args.seed)
    batches = tc.endless(tc.loader(data, args.batch_size, comm.rank, comm.size, args.seed))
    timer = WindowTimer(args.warmup, args.steps, args.repeats)
    clock = PhaseClock()

    def line_up() -> None:
        # Only the no-communication ceiling needs this: time the same period in every process.
        if timer.step == timer.warmup:
            comm.barrier.arrive(f"warm-{name}")
            comm.barrier.wait(f"warm-{name}")
            timer.restart_window()

    first, last = tc.train(model, optimizer, batches, timer, clock, synchronize, step,
                           line_up if comm.kind == "none" else None)
    if comm.kind == "none":
        keep_busy_until_all_done(model, optimizer, batches, comm.barrier, f"done-{name}")
    return ThroughputResult(
        variant=args.variant or f"torch-{comm.kind}", model=name, rank=comm.rank, size=comm.size,
        batch_size=args.batch_size, threads=torch.get_num_threads(), warmup=args.warmup,
        steps=args.steps, window_seconds=timer.window_seconds(), window_marks=timer.marks,
        loss_first=first, loss_last=last, phases_ms=clock.per_step_ms(args.steps * args.repeats),
        extra=comm.info).to_dict()


def keep_busy_until_all_done(model: Any, optimizer: Any, batches: Any, barrier: FileBarrier, name: str) -> None:
    """Keep training (untimed) until every independent process has finished timing.

    Otherwise the last process would time its final steps on an idle machine
    and the ceiling would be overstated.
    """
    import torch

    barrier.arrive(name)
    loss_fn = torch.nn.CrossEntropyLoss()
    deadline = time.monotonic() + 300
    while not barrier.everyone(name) and time.monotonic() < deadline:
        x, y = next(batches)
        optimizer.zero_grad()
        loss_fn(model(x), y).backward()
        optimizer.step()


def main() -> None:
    args = parse_args()
    set_thread_env(args.threads)
    comm = init_comm(args.comm, args.compression)
    for name in args.models:
        emit(measure(args, comm, name))
    if comm.kind == "ddp":
        # Leave together: a rank exiting while its peer is still connected aborts in Gloo.
        import torch.distributed as dist

        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
