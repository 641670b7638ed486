"""Per-step cost of Keras ``model.fit`` on a tiny model, plain and through ``hvdtrain.tensorflow.fit``.

The model (32-32-10, batch 32) is so small that the step is mostly the loop's own work: what
``htf.fit`` adds (sharding, callbacks, the distributed optimizer) is what is measured.

Launch:
    python benchmarks/workers/overhead_keras.py --loop plain                   (Keras alone)
    python benchmarks/workers/overhead_keras.py --loop hvdtrain --comm none    (one process, serial backend)
    horovodrun -np 2 --gloo python benchmarks/workers/overhead_keras.py --loop hvdtrain --comm hvd

Every rank prints one ``BENCH_RESULT {json}`` line with the microseconds per step of each timed epoch.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks.common import (
    NUM_CLASSES,
    TINY_FEATURES,
    TINY_HIDDEN,
    add_overhead_args,
    emit,
    import_hvdtrain_from_compared_checkout,
    overhead_result,
    set_thread_env,
)

import_hvdtrain_from_compared_checkout()


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loop", choices=("plain", "hvdtrain"), required=True)
    parser.add_argument("--comm", choices=("none", "hvd"), default="none")
    add_overhead_args(parser)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    set_thread_env(args.threads)
    from benchmarks import tf_common as tfc

    tfc.configure_threads(args.threads, args.seed)
    import keras
    import numpy as np

    rank, size, htf, backend = 0, 1, None, None
    if args.loop == "hvdtrain":
        import hvdtrain.tensorflow as htf

        if args.comm == "hvd":
            htf.init()
            import horovod.tensorflow as hvd

            rank, size = hvd.rank(), hvd.size()
        else:
            backend = htf.SerialBackend()
    rng = np.random.default_rng(args.seed)
    x = rng.standard_normal((args.samples_per_rank * size, TINY_FEATURES), dtype=np.float32)
    y = np.argmax(x @ rng.standard_normal((TINY_FEATURES, NUM_CLASSES), dtype=np.float32), axis=1).astype(np.int64)
    model = keras.Sequential([keras.Input((TINY_FEATURES,)), keras.layers.Dense(TINY_HIDDEN, activation="relu"),
                              keras.layers.Dense(NUM_CLASSES)])
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss=tfc.loss_fn())
    starts: list[float] = []
    ends: list[float] = []
    clock = keras.callbacks.LambdaCallback(on_epoch_begin=lambda *_: starts.append(time.perf_counter()),
                                           on_epoch_end=lambda *_: ends.append(time.perf_counter()))
    epochs = args.warmup_epochs + args.epochs
    if htf is None:
        model.fit(x, y, batch_size=args.batch_size, epochs=epochs, shuffle=True, verbose=0, callbacks=[clock])
    else:
        htf.fit(model, x, y, batch_size=args.batch_size, epochs=epochs, callbacks=[clock], seed=args.seed,
                progress=False, verbose=0, backend=backend)
    emit(overhead_result(args, rank, size, [end - start for start, end in zip(starts, ends)]))


if __name__ == "__main__":
    main()
