"""hvdtrain's Keras 3 training on the benchmark workload, timed by an hvdtrain callback.

Launch with ``hvdtrain run -np 2 benchmarks/workers/keras_hvdtrain.py`` or mpirun.
Every rank prints one ``BENCH_RESULT {json}`` line per model. The TensorFlow
adapter (``hvdtrain.tensorflow``) is written separately from this benchmark;
when its entry point does not match what this worker knows how to drive, the
worker prints ``BENCH_UNAVAILABLE <reason>`` and exits 0, and the report shows
the variant as not available rather than failing the whole run.
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
    return parser.parse_args()


def fit(htf: Any, model: Any, x: Any, y: Any, args: argparse.Namespace, epochs: int, callback: Any) -> None:
    """Train through whichever entry point the adapter offers (a Trainer, or fit())."""
    from benchmarks import tf_common as tfc

    if hasattr(htf, "Trainer"):
        trainer = htf.Trainer(model, tfc.sgd(args.lr), tfc.loss_fn(), train_data=(x, y),
                              batch_size=args.batch_size, max_epochs=epochs, callbacks=[callback],
                              progress=False, seed=args.seed)
        trainer.fit()
        return
    model.compile(optimizer=tfc.sgd(args.lr), loss=tfc.loss_fn())
    htf.fit(model, x, y, batch_size=args.batch_size, epochs=epochs, callbacks=[callback], verbose=0)


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

    if not (hasattr(htf, "Trainer") or hasattr(htf, "fit")) or not hasattr(htf, "init"):
        print(f"{UNAVAILABLE_MARKER}hvdtrain.tensorflow has neither Trainer nor fit() with init()", flush=True)
        return
    htf.init()
    for name in args.models:
        try:
            emit(measure(args, htf, name))
        except TypeError as error:  # the adapter's signature differs from the one driven here
            print(f"{UNAVAILABLE_MARKER}hvdtrain.tensorflow API not supported by this benchmark: {error}",
                  flush=True)
            return


if __name__ == "__main__":
    main()
