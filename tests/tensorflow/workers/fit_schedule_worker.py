"""``htf.fit`` with a Keras CosineDecay under warmup, checkpointing mid-epoch, for the kill-and-resume test.

``--reference-dir DIR`` first trains uninterrupted into DIR and reports that run; then the run into
``--checkpoint-dir`` follows (with ``--die-at-step``, every rank SIGKILLs itself there). With
``--resume`` the run resumes from ``--checkpoint-dir`` and reports.
"""
from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np

import hvdtrain.tensorflow as htf
from hvdtrain.callbacks import Callback
from tests.launch import report
from tests.probes import DieAtStep, Recorder, make_data, worker_parser

BASE_LR = 0.05


class Grab(Callback):
    """Keeps the context, and the LR when training ends."""

    def on_train_begin(self, ctx):
        self.ctx = ctx

    def on_train_end(self, ctx):
        self.final_lr = ctx.adapter.get_learning_rates(ctx.optimizer)[0]


def train(args, backend, directory, die_at_step=None):
    import keras

    keras.utils.set_random_seed(1234 + backend.rank)  # different init per rank: broadcast or restore fixes it
    model = keras.Sequential([keras.Input((10,)), keras.layers.Dense(16, activation="relu"),
                              keras.layers.Dropout(0.2), keras.layers.Dense(2)])
    schedule = keras.optimizers.schedules.CosineDecay(BASE_LR, decay_steps=10 * args.epochs)
    model.compile(optimizer=keras.optimizers.SGD(schedule, momentum=0.9),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    recorder, grab = Recorder(), Grab()
    probes = [recorder, grab] + ([DieAtStep(die_at_step, backend.rank)] if die_at_step else [])
    htf.fit(model, *make_data(0), validation_data=make_data(1, 100), batch_size=16, epochs=args.epochs,
            callbacks=probes, warmup_epochs=args.warmup_epochs, checkpoint_dir=directory, resume=args.resume,
            checkpoint_every_n_steps=args.every_n_steps, progress=False, seed=7, verbose=0)
    params = np.concatenate([w.ravel() for w in model.get_weights()])
    report({"rank": backend.rank, "params": params.astype(float).tolist(), "lrs": recorder.lrs,
            "final_lr": grab.final_lr, "global_step": grab.ctx.global_step, "steps": recorder.steps,
            "history": grab.ctx.history, "resumed_from": grab.ctx.resumed_from})


def main() -> None:
    p = worker_parser()
    p.add_argument("--reference-dir", help="train uninterrupted into this directory first, and report that run")
    args = p.parse_args()
    backend = htf.init()
    if args.reference_dir:
        train(args, backend, args.reference_dir)
    train(args, backend, args.checkpoint_dir, args.die_at_step)


if __name__ == "__main__":
    main()
