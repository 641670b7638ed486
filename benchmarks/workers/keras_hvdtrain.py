"""hvdtrain's Keras 3 training on the benchmark workload, timed by an hvdtrain callback.

Launch with ``hvdtrain run -np 2 benchmarks/workers/keras_hvdtrain.py`` or mpirun.
Every rank prints one ``BENCH_RESULT {json}`` line per model. It measures
``hvdtrain.tensorflow.fit`` (Keras ``model.fit`` with hvdtrain's default
callbacks and the distributed optimizer), to compare with the raw
``grouped_allreduce`` loop in ``tf_loop.py``.
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks.callbacks import timing_callback
from benchmarks.common import (
    ThroughputResult,
    WindowTimer,
    add_workload_args,
    emit,
    set_thread_env,
)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_workload_args(parser)
    return parser.parse_args()


def fit(htf: Any, model: Any, x: Any, y: Any, args: argparse.Namespace, epochs: int, callback: Any) -> None:
    """Keras ``model.fit`` through hvdtrain, as a user calls it (progress bar off: it is not timed work)."""
    from benchmarks import tf_common as tfc

    model.compile(optimizer=tfc.sgd(args.lr), loss=tfc.loss_fn())
    htf.fit(model, x, y, batch_size=args.batch_size, epochs=epochs, callbacks=[callback], seed=args.seed,
            progress=False, verbose=0)


def measure(args: argparse.Namespace, htf: Any, name: str) -> dict[str, Any]:
    """Train ``name`` until the timer is done; returns the result dict."""
    import horovod.tensorflow as hvd

    from benchmarks import tf_common as tfc

    # The whole data set, as a user would pass it: the adapter shards it across ranks.
    x, y = tfc.local_arrays(name, args.samples_per_rank * hvd.size(), 0, 1, args.seed)
    timer = WindowTimer(args.warmup, args.steps, args.repeats)
    callback = timing_callback(timer)
    epochs = math.ceil(timer.total_steps / (args.samples_per_rank // args.batch_size)) + 1
    fit(htf, tfc.build_model(name), x, y, args, epochs, callback)
    losses = callback.losses or [float("nan")]
    return ThroughputResult(
        variant=args.variant or "hvdtrain-keras", model=name, rank=callback.rank, size=callback.size,
        batch_size=args.batch_size, threads=args.threads, warmup=args.warmup, steps=args.steps,
        window_seconds=timer.window_seconds(), window_marks=timer.marks, loss_first=losses[0],
        loss_last=losses[-1]).to_dict()


def main() -> None:
    args = parse_args()
    set_thread_env(args.threads)
    from benchmarks import tf_common as tfc

    tfc.configure_threads(args.threads, args.seed)
    import hvdtrain.tensorflow as htf

    htf.init()
    for name in args.models:
        emit(measure(args, htf, name))


if __name__ == "__main__":
    main()
