"""hvdtrain's PyTorch Trainer on the benchmark workload, timed by a callback.

Launch with hvdtrain's own launcher (``hvdtrain run -np 2 benchmarks/workers/torch_hvdtrain.py``)
or any Horovod launcher. Every rank prints one ``BENCH_RESULT {json}`` line.
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks.callbacks import timing_callback
from benchmarks.common import MOMENTUM, ThroughputResult, WindowTimer, add_workload_args, emit, set_thread_env


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_workload_args(parser)
    return parser.parse_args()


def measure(args: argparse.Namespace, name: str) -> dict[str, Any]:
    """Fit hvdtrain's Trainer on ``name`` until the timer is done; returns the result dict."""
    import horovod.torch as hvd
    import torch

    import hvdtrain.torch as ht
    from benchmarks import torch_common as tc

    torch.manual_seed(args.seed)
    model = tc.build_model(name)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=MOMENTUM)
    data = tc.dataset(name, args.samples_per_rank, hvd.size(), args.seed)
    timer = WindowTimer(args.warmup, args.steps, args.repeats)
    callback = timing_callback(timer)
    epochs = math.ceil(timer.total_steps / (args.samples_per_rank // args.batch_size)) + 1
    trainer = ht.Trainer(model, optimizer, torch.nn.CrossEntropyLoss(), train_data=data,
                         batch_size=args.batch_size, epochs=epochs, callbacks=[callback],
                         progress=False, seed=args.seed)
    trainer.fit()
    losses = callback.losses or [float("nan")]
    return ThroughputResult(
        variant=args.variant or "hvdtrain-torch", model=name, rank=callback.rank,
        size=callback.size, batch_size=args.batch_size, threads=torch.get_num_threads(),
        warmup=args.warmup, steps=args.steps, window_seconds=timer.window_seconds(), window_marks=timer.marks,
        loss_first=losses[0], loss_last=losses[-1],
        extra={"horovod_controller": "mpi" if hvd.mpi_enabled() else "gloo"}).to_dict()


def main() -> None:
    args = parse_args()
    set_thread_env(args.threads)
    import hvdtrain.torch as ht

    ht.init(args.threads)
    for name in args.models:
        emit(measure(args, name))


if __name__ == "__main__":
    main()
