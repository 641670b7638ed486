"""Hand-written Keras 3 / TensorFlow loop: raw Horovod allreduce, or no communication.

The Horovod variant is the minimal correct custom loop with Keras 3: a
``tf.function`` train step that averages the gradients with
``hvd.grouped_allreduce`` before ``optimizer.apply_gradients``, and the
initial weights broadcast from rank 0.

Launch:
    mpirun -np 2 python benchmarks/workers/tf_loop.py --comm hvd
    BENCH_RANK=r BENCH_SIZE=n python benchmarks/workers/tf_loop.py --comm none   (one per rank)
"""
from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks.common import (
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
    parser.add_argument("--comm", choices=("hvd", "none"), required=True)
    return parser.parse_args()


def make_step(model: Any, optimizer: Any, loss_obj: Any, allreduce: Callable | None) -> Callable:
    """The compiled train step; ``allreduce`` averages a list of gradients."""
    import tensorflow as tf

    @tf.function
    def train_step(x: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
        with tf.GradientTape() as tape:
            loss = loss_obj(y, model(x, training=True))
        grads = tape.gradient(loss, model.trainable_variables)
        if allreduce is not None:
            grads = allreduce(grads)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    return train_step


def init_horovod() -> tuple[Any, int, int]:
    """Horovod's TensorFlow core ops (its Keras wrappers predate Keras 3)."""
    import horovod.tensorflow as hvd

    hvd.init()
    return hvd, hvd.rank(), hvd.size()


def measure(args: argparse.Namespace, name: str, hvd: Any, rank: int, size: int,
            barrier: FileBarrier) -> dict[str, Any]:
    """Train ``name`` for the warmup and the timed windows; returns the result dict."""
    from benchmarks import tf_common as tfc

    model = tfc.build_model(name)
    optimizer = tfc.sgd(args.lr)
    optimizer.build(model.trainable_variables)
    allreduce = None
    if hvd is not None:
        hvd.broadcast_variables([v.value for v in model.variables], root_rank=0)

        def allreduce(grads: list) -> list:
            return hvd.grouped_allreduce(grads, op=hvd.Average)

    train_step = make_step(model, optimizer, tfc.loss_fn(), allreduce)
    x, y = tfc.local_arrays(name, args.samples_per_rank, rank, size, args.seed)
    batches = iter(tfc.batches(x, y, args.batch_size, args.seed))
    timer = WindowTimer(args.warmup, args.steps, args.repeats)
    clock = PhaseClock()
    first, last = run(train_step, batches, timer, clock, barrier, name)
    return ThroughputResult(
        variant=args.variant or f"tf-{args.comm}", model=name, rank=rank, size=size,
        batch_size=args.batch_size, threads=args.threads, warmup=args.warmup, steps=args.steps,
        window_seconds=timer.window_seconds(), window_marks=timer.marks, loss_first=first, loss_last=last,
        phases_ms=clock.per_step_ms(args.steps * args.repeats)).to_dict()


def main() -> None:
    args = parse_args()
    set_thread_env(args.threads)
    from benchmarks import tf_common as tfc

    tfc.configure_threads(args.threads, args.seed)
    hvd = None
    if args.comm == "hvd":
        hvd, rank, size = init_horovod()
    else:
        rank, size = env_world()
    barrier = FileBarrier(os.environ.get("BENCH_BARRIER_DIR") if hvd is None else None, rank, size)
    for name in args.models:
        emit(measure(args, name, hvd, rank, size, barrier))


def run(train_step: Callable, batches: Any, timer: WindowTimer, clock: PhaseClock,
        barrier: FileBarrier, name: str) -> tuple[float, float]:
    """Run the warmup and the timed windows; returns the first and last loss."""
    first = float("nan")
    timer.begin()
    clock.enabled = timer.timing
    clock.reset()
    while not timer.done:
        x, y = next(batches)
        clock.lap("data")
        loss = train_step(x, y)
        clock.lap("step")
        if timer.step == 0:
            first = float(loss)
        timer.tick()
        if timer.step == timer.warmup and barrier.directory is not None:
            barrier.arrive(f"warm-{name}")
            barrier.wait(f"warm-{name}")
            timer.restart_window()
        clock.enabled = timer.timing
        clock.reset()
    last = float(loss)
    if barrier.directory is not None:
        barrier.arrive(f"done-{name}")
        while not barrier.everyone(f"done-{name}"):
            train_step(*next(batches))
    return first, last


if __name__ == "__main__":
    main()
