"""The TensorFlow Trainer under elastic training (horovodrun --min-np/--max-np), for test_parallel_elastic.py."""
from __future__ import annotations

import argparse
import hashlib
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np

import hvdtrain.tensorflow as htf
from hvdtrain.callbacks import Callback
from tests.launch import report
from tests.probes import make_data


class WorldChanges(Callback):
    """Records every ``on_world_change`` as ``[old_size, new_size]``."""

    def __init__(self) -> None:
        self.seen: list[list[int]] = []

    def on_world_change(self, ctx, old_size, new_size):
        self.seen.append([old_size, new_size])


class SlowBatches(Callback):
    """Sleeps after every batch, longer while the world is below ``full_size``: the tiny job runs long
    enough to lose a worker mid-training, and cannot end before a new worker joined."""

    def __init__(self, seconds: float, short_handed_seconds: float, full_size: int) -> None:
        self.seconds, self.short_handed_seconds, self.full_size = seconds, short_handed_seconds, full_size

    def on_batch_end(self, ctx):
        time.sleep(self.short_handed_seconds if ctx.size < self.full_size else self.seconds)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--commit-every-n-steps", type=int, default=5)
    p.add_argument("--batch-sleep", type=float, default=0.02)
    p.add_argument("--short-handed-sleep", type=float, default=0.02, help="per batch while below the first size")
    p.add_argument("--log-dir", required=True)
    args = p.parse_args()
    backend = htf.init()
    first_size = backend.size
    import keras

    keras.utils.set_random_seed(1234 + backend.rank)  # different init per rank: the first sync must fix it
    model = keras.Sequential([keras.Input((10,)), keras.layers.Dense(16, activation="relu"),
                              keras.layers.Dropout(0.1), keras.layers.Dense(2)])
    changes = WorldChanges()
    slow = SlowBatches(args.batch_sleep, args.short_handed_sleep, first_size)
    trainer = htf.Trainer(model, keras.optimizers.Adam(0.01),
                          keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                          train_data=make_data(0, 600), val_data=make_data(1, 200),
                          metrics={"accuracy": htf.accuracy}, callbacks=[changes, slow],
                          batch_size=16, epochs=args.epochs, commit_every_n_steps=args.commit_every_n_steps,
                          log_dir=args.log_dir, progress=False, seed=7)
    history = trainer.fit()
    params = np.concatenate([w.ravel() for w in model.get_weights()])
    report({"rank": backend.rank, "size": backend.size, "epoch": trainer.ctx.epoch,
            "global_step": trainer.ctx.global_step, "history": history, "world_changes": changes.seen,
            "digest": hashlib.sha256(params.tobytes()).hexdigest()})


if __name__ == "__main__":
    main()
