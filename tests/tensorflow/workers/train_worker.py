"""A configurable TensorFlow training job (Trainer or Keras fit) for the multi-process tests."""
from __future__ import annotations

import hashlib
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np

import hvdtrain.tensorflow as htf
from hvdtrain.callbacks import Callback
from tests.launch import report
from tests.probes import hidden_width, make_data, probe_callbacks, run_reporting_errors, worker_parser


def parse_args():
    p = worker_parser()
    p.add_argument("--api", choices=("trainer", "trainer_dataset", "fit", "fit_dataset"), default="trainer",
                   help="trainer_dataset, fit_dataset: on tf.data shards, rank 0's with more batches")
    p.add_argument("--rank1-unknown-length", action="store_true", help="fit_dataset: rank 1's length is unknown")
    p.add_argument("--jit-compile", action="store_true", help="compile the Keras model with XLA (as on a GPU)")
    return p.parse_args()


def build_model(args, rank: int):
    import keras

    keras.utils.set_random_seed(1234 + rank)  # different init per rank: broadcast must fix it
    layers = [keras.Input((10,)), keras.layers.Dense(hidden_width(args, rank), activation="relu"),
              keras.layers.Dropout(0.2), keras.layers.Dense(2)]
    if args.rank1_extra_layer and rank == 1:
        layers.append(keras.layers.Dense(2))
    return keras.Sequential(layers)


def make_loss(args, rank):
    import keras
    import tensorflow as tf

    base = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    if args.nan_at_step is None:
        return base
    calls = tf.Variable(0, dtype=tf.int64, trainable=False)

    def loss_fn(y_true, y_pred):
        # Counts forward passes inside the compiled step; rank 1's loss is NaN at one step.
        count = calls.assign_add(1)
        value = base(y_true, y_pred)
        poison = tf.logical_and(tf.equal(count, args.nan_at_step), rank == 1)
        # A factor, not tf.where on the loss: the unselected NaN branch would poison every gradient.
        return value * tf.where(poison, float("nan"), 1.0)

    return loss_fn


def common(args):
    return dict(warmup_epochs=args.warmup_epochs, checkpoint_dir=args.checkpoint_dir, resume=args.resume,
                monitor="plateau" if args.patience else "val_loss", early_stopping_patience=args.patience,
                progress=False, seed=7, commit_every_n_steps=args.commit_every)


def run_trainer(args, backend, model, extra):
    import keras

    trainer = htf.Trainer(model, keras.optimizers.Adam(0.01), make_loss(args, backend.rank),
                          train_data=make_data(0), val_data=make_data(1, 100), batch_size=16,
                          epochs=args.epochs, callbacks=extra, checkpoint_every_n_steps=args.every_n_steps,
                          **common(args))
    history = trainer.fit()
    return trainer.ctx, history


def uneven_shard(arrays, rank: int, batch_size: int):
    """This rank's tf.data shard, batched: rank 0 gets the first 57% of the samples, rank 1 the rest."""
    import tensorflow as tf

    cut = round(len(arrays[1]) * 0.57)
    part = slice(0, cut) if rank == 0 else slice(cut, None)
    return tf.data.Dataset.from_tensor_slices((arrays[0][part], arrays[1][part])).batch(batch_size)


def run_trainer_dataset(args, backend, model, extra):
    import keras

    trainer = htf.Trainer(model, keras.optimizers.Adam(0.01), make_loss(args, backend.rank),
                          train_data=uneven_shard(make_data(0), backend.rank, 16),
                          val_data=uneven_shard(make_data(1, 100), backend.rank, 16), epochs=args.epochs,
                          callbacks=extra, **common(args))
    history = trainer.fit()
    # The same validation set as arrays, sharded by the Trainer: the dataset's result must match it.
    history[-1]["val_loss_of_arrays"] = trainer.evaluate(make_data(1, 100))["val_loss"]
    return trainer.ctx, history


def run_fit(args, backend, model, extra):
    return _fit(args, backend, model, extra, *make_data(0), validation_data=make_data(1, 100), batch_size=16)


def run_fit_dataset(args, backend, model, extra):
    train = uneven_shard(make_data(0), backend.rank, 16)
    if args.rank1_unknown_length and backend.rank == 1:
        train = train.filter(lambda x, y: True)  # tf.data cannot know this length
    return _fit(args, backend, model, extra, train)


def _fit(args, backend, model, extra, *data, **fit_args):
    import keras

    model.compile(optimizer=keras.optimizers.Adam(0.01), loss=make_loss(args, backend.rank),
                  metrics=["accuracy"], jit_compile=True if args.jit_compile else "auto")
    bridge_holder = {}

    class Grab(Callback):
        def on_train_begin(self, ctx):
            bridge_holder["ctx"] = ctx

    htf.fit(model, *data, epochs=args.epochs, callbacks=[*extra, Grab()], verbose=0, **fit_args, **common(args))
    ctx = bridge_holder["ctx"]
    return ctx, ctx.history


def main() -> None:
    args = parse_args()
    backend = htf.init()
    run_reporting_errors(args, backend, lambda: train(args, backend))


def train(args, backend) -> None:
    model = build_model(args, backend.rank)
    recorder, extra = probe_callbacks(args)
    run = {"trainer": run_trainer, "trainer_dataset": run_trainer_dataset, "fit": run_fit,
           "fit_dataset": run_fit_dataset}[args.api]
    ctx, history = run(args, backend, model, extra)
    params = np.concatenate([w.ravel() for w in model.get_weights()])
    report({
        "rank": backend.rank, "size": backend.size, "digest": hashlib.sha256(params.tobytes()).hexdigest(),
        "global_step": ctx.global_step, "epoch": ctx.epoch, "history": history, "lrs": recorder.lrs,
        "steps": recorder.steps, "world_changes": recorder.world_changes, "epoch_logs": recorder.epoch_logs,
        "stop_reason": ctx.stop_reason,
        "resumed_from": ctx.resumed_from, "params": params.astype(float).tolist(),
        "finite": bool(np.isfinite(params).all()),
    })


if __name__ == "__main__":
    main()
