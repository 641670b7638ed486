"""One optimizer step per API on 2 workers, in float64: the update must be the combined batch's gradient.

For each mode the model starts from rank-dependent weights, so the broadcast matters. After the step,
``(old - new) / lr`` (plain SGD) is compared with the gradient one process computes on the union of
every rank's batches.
"""
from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras
import numpy as np
import tensorflow as tf

import hvdtrain.tensorflow as htf
from tests.launch import report

BATCH = 8  # per rank and step
LR = 0.1
keras.config.set_floatx("float64")


def make_data(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.RandomState(seed)
    x = rng.randn(n, 6)
    return x, (x[:, :3].sum(1) > 0).astype(np.int64)


def build_model(rank: int) -> keras.Model:
    keras.utils.set_random_seed(100 + rank)  # different on each rank until the broadcast
    return keras.Sequential([keras.Input((6,)), keras.layers.Dense(12, activation="tanh"), keras.layers.Dense(2)])


def loss_fn() -> keras.losses.Loss:
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def flat(model: keras.Model) -> np.ndarray:
    return np.concatenate([np.asarray(v).ravel() for v in model.get_weights()])


def reference_gradient(model: keras.Model, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The single-process gradient of the mean loss over all of ``x``."""
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(loss_fn()(y, model(x, training=True)))
    return np.concatenate([g.numpy().ravel() for g in tape.gradient(loss, model.trainable_variables)])


def step_fit(model, backend, samples, passes=1):
    x, y = make_data(samples)
    model.compile(optimizer=keras.optimizers.SGD(LR), loss=loss_fn())
    htf.broadcast_state(model, backend=backend)
    before, grad = flat(model), reference_gradient(model, x, y)
    htf.fit(model, x, y, batch_size=BATCH, epochs=1, backward_passes_per_step=passes, backend=backend,
            progress=False, verbose=0)
    return before, grad, model.optimizer


def step_trainer(model, backend, samples, passes=1):
    x, y = make_data(samples)
    htf.broadcast_state(model, backend=backend)
    before, grad = flat(model), reference_gradient(model, x, y)
    trainer = htf.Trainer(model, keras.optimizers.SGD(LR), loss_fn(), (x, y), batch_size=BATCH, epochs=1,
                          backward_passes_per_step=passes, backend=backend, progress=False)
    trainer.fit()
    return before, grad, trainer.optimizer


def step_loop(model, backend, distributed):
    x, y = make_data(2 * BATCH)
    optimizer = keras.optimizers.SGD(LR)
    if distributed:
        optimizer = htf.DistributedOptimizer(optimizer)
    htf.broadcast_state(model, optimizer, backend=backend)
    before, grad = flat(model), reference_gradient(model, x, y)
    shard = slice(backend.rank * BATCH, (backend.rank + 1) * BATCH)
    htf.make_train_step(model, optimizer, loss_fn())(x[shard], y[shard])
    return before, grad, optimizer


MODES = {
    "fit": lambda m, b: step_fit(m, b, 2 * BATCH),
    "trainer": lambda m, b: step_trainer(m, b, 2 * BATCH),
    "loop": lambda m, b: step_loop(m, b, distributed=True),
    "loop_plain": lambda m, b: step_loop(m, b, distributed=False),
    "trainer_uneven": lambda m, b: step_trainer(m, b, 2 * BATCH - 3),  # ranks get 8 and 5 samples
    "fit_accum": lambda m, b: step_fit(m, b, 4 * BATCH, passes=2),
    "trainer_accum": lambda m, b: step_trainer(m, b, 4 * BATCH, passes=2),
}


def main() -> None:
    backend = htf.init()
    out = {"rank": backend.rank}
    for mode, run in MODES.items():
        model = build_model(backend.rank)
        before, grad, optimizer = run(model, backend)
        after = flat(model)
        lr = float(optimizer.learning_rate.numpy())
        out[f"{mode}_update"] = float(np.abs(after - before).max())
        out[f"{mode}_grad_error"] = float(np.abs((before - after) / lr - grad).max())
        everyone = backend.allgather_object(after)
        out[f"{mode}_param_spread"] = float(max(np.abs(p - everyone[0]).max() for p in everyone))
        out[f"{mode}_lr"] = lr
    report(out)


if __name__ == "__main__":
    main()
