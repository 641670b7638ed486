"""Runs one user-written callback class, unchanged, under the PyTorch Trainer or the TensorFlow adapter.

``--framework torch`` trains with ``hvdtrain.torch.Trainer``; ``--framework tensorflow`` trains with
``hvdtrain.tensorflow.Trainer`` and then with Keras ``model.fit`` through ``hvdtrain.tensorflow.fit``.
Each run reports what ``Probe`` saw, for the test to compare across frameworks.
"""
from __future__ import annotations

import argparse
import math
import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np

from hvdtrain.callbacks import Callback
from hvdtrain.core.distributed import rank_zero_only
from tests.launch import report

BASE_LR, BATCH, EPOCHS = 0.1, 16, 4


class Probe(Callback):
    """A user callback written once against ``TrainContext`` and the adapter protocol, nothing else.

    It records the hooks it sees, halves the learning rate at the second epoch, requests a stop at the
    end of it, keeps state for checkpoints and writes a file on rank 0 only.
    """

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir
        self.events: list[list] = []
        self.batches = 0
        self.finite_losses = True

    def on_train_begin(self, ctx):
        lr = ctx.adapter.get_learning_rates(ctx.optimizer)[0]
        self.events.append(["train_begin", ctx.rank, ctx.size, ctx.max_epochs, round(lr, 6)])

    def on_epoch_begin(self, ctx):
        self.events.append(["epoch_begin", ctx.epoch, ctx.steps_per_epoch, ctx.batch_index])
        if ctx.epoch == 1:
            rates = ctx.adapter.get_learning_rates(ctx.optimizer)
            ctx.adapter.set_learning_rates(ctx.optimizer, [r / 2 for r in rates])

    def on_batch_begin(self, ctx):
        ctx.extras["probe_batch_begin"] = ctx.global_step

    def on_batch_end(self, ctx):
        assert ctx.extras["probe_batch_begin"] + 1 == ctx.global_step
        self.batches += 1
        self.finite_losses &= math.isfinite(float(ctx.logs["loss"]))

    def on_epoch_end(self, ctx):
        lr = ctx.adapter.get_learning_rates(ctx.optimizer)[0]
        self.events.append(["epoch_end", ctx.epoch, ctx.global_step, ctx.samples_seen_in_epoch, self.batches,
                            sorted(k for k in ctx.logs if k in ("loss", "val_loss", "accuracy", "val_accuracy")),
                            round(lr, 6)])
        if ctx.epoch == 1:
            ctx.request_stop("probe: enough")

    @rank_zero_only
    def on_train_end(self, ctx):
        self.events.append(["train_end", ctx.epoch, ctx.stop_reason])
        (self.out_dir / f"probe-{ctx.adapter.name}-rank{ctx.rank}.txt").write_text(ctx.stop_reason or "")

    def state_dict(self):
        return {"batches": self.batches}

    def load_state_dict(self, state):
        self.batches = state["batches"]


def make_data(seed: int, n: int):
    rng = np.random.RandomState(seed)
    x = rng.randn(n, 10).astype(np.float32)
    return x, (x[:, :3].sum(1) > 0).astype(np.int64)


def run_torch(out_dir: Path) -> dict:
    import torch
    from torch import nn

    import hvdtrain.torch as ht
    from hvdtrain.torch.trainer import accuracy

    backend = ht.init()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 2))
    as_tensors = lambda xy: tuple(torch.from_numpy(a) for a in xy)  # noqa: E731
    probe = Probe(out_dir)
    ht.Trainer(model, torch.optim.SGD(model.parameters(), lr=BASE_LR), nn.functional.cross_entropy,
               train_data=as_tensors(make_data(0, 300)), val_data=as_tensors(make_data(1, 100)), batch_size=BATCH,
               epochs=EPOCHS, metrics={"accuracy": accuracy}, callbacks=[probe], progress=False).fit()
    return {"rank": backend.rank, "torch": probe.events, "torch_finite": probe.finite_losses}


def run_tensorflow(out_dir: Path) -> dict:
    import hvdtrain.tensorflow as htf

    backend = htf.init()
    import keras

    def model():
        keras.utils.set_random_seed(0)
        return keras.Sequential([keras.Input((10,)), keras.layers.Dense(16, activation="relu"),
                                 keras.layers.Dense(2)])

    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    trainer_probe, fit_probe = Probe(out_dir), Probe(out_dir)
    htf.Trainer(model(), keras.optimizers.SGD(BASE_LR), loss, train_data=make_data(0, 300),
                val_data=make_data(1, 100), batch_size=BATCH, epochs=EPOCHS, metrics={"accuracy": htf.accuracy},
                callbacks=[trainer_probe], progress=False).fit()
    keras_model = model()
    keras_model.compile(optimizer=keras.optimizers.SGD(BASE_LR), loss=loss, metrics=["accuracy"])
    htf.fit(keras_model, *make_data(0, 300), validation_data=make_data(1, 100), batch_size=BATCH, epochs=EPOCHS,
            callbacks=[fit_probe], progress=False, verbose=0)
    return {"rank": backend.rank, "tensorflow": trainer_probe.events, "keras": fit_probe.events,
            "tensorflow_finite": trainer_probe.finite_losses, "keras_finite": fit_probe.finite_losses}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--framework", choices=("torch", "tensorflow"), required=True)
    parser.add_argument("--out-dir", type=Path, required=True)
    args = parser.parse_args()
    report((run_torch if args.framework == "torch" else run_tensorflow)(args.out_dir))


if __name__ == "__main__":
    main()
