"""Keras 3 (TensorFlow backend) models and data shared by the TensorFlow workers.

Import this module only after ``configure_threads`` has been decided: it
imports TensorFlow, whose thread pools are fixed at first use.
"""
from __future__ import annotations

import os
from collections.abc import Iterator

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras
import numpy as np
import tensorflow as tf

from benchmarks.common import IMAGE_SIDE, MOMENTUM, NUM_CLASSES, is_conv, shard, synthetic_data


def configure_threads(threads: int, seed: int) -> None:
    """One intra-op and one inter-op thread per worker by default; fixed seeds."""
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)
    keras.utils.set_random_seed(seed)


def build_model(name: str) -> keras.Model:
    """The Keras twin of ``benchmarks.torch_common.build_model(name)``."""
    if name in ("mlp", "tiny-mlp"):
        hidden = 2048 if name == "mlp" else 64
        layers = [keras.layers.Dense(hidden, activation="relu"),
                  keras.layers.Dense(hidden, activation="relu")]
        shape: tuple[int, ...] = (IMAGE_SIDE * IMAGE_SIDE,)
    elif name in ("cnn", "tiny-cnn"):
        c1, c2, hidden = (32, 64, 128) if name == "cnn" else (4, 8, 16)
        layers = [keras.layers.Conv2D(c1, 3, padding="same", activation="relu"),
                  keras.layers.MaxPooling2D(2),
                  keras.layers.Conv2D(c2, 3, padding="same", activation="relu"),
                  keras.layers.MaxPooling2D(2),
                  keras.layers.Flatten(),
                  keras.layers.Dense(hidden, activation="relu")]
        shape = (IMAGE_SIDE, IMAGE_SIDE, 1)
    else:
        raise ValueError(f"unknown model {name!r}")
    model = keras.Sequential([keras.Input(shape), *layers, keras.layers.Dense(NUM_CLASSES)])
    return model


def local_arrays(model: str, samples_per_rank: int, rank: int, size: int,
                 seed: int) -> tuple[np.ndarray, np.ndarray]:
    """This rank's shard of the same global data set the PyTorch workers use."""
    x, y = synthetic_data(samples_per_rank * size, seed)
    part = shard(len(x), rank, size)
    x, y = x[part], y[part]
    if is_conv(model):
        x = x.reshape(-1, IMAGE_SIDE, IMAGE_SIDE, 1)
    return x, y


def batches(x: np.ndarray, y: np.ndarray, batch_size: int,
            seed: int) -> Iterator[tuple[tf.Tensor, tf.Tensor]]:
    """Endless shuffled batches of this rank's shard, as tensors.

    A NumPy permutation per epoch plus one gather per batch: the same work
    as PyTorch's DataLoader over a TensorDataset, and much cheaper on one
    core than a per-sample ``tf.data`` shuffle, which starves the step.
    """
    rng = np.random.default_rng(seed)
    steps = len(x) // batch_size
    while True:
        order = rng.permutation(len(x))
        for i in range(steps):
            idx = order[i * batch_size:(i + 1) * batch_size]
            yield tf.convert_to_tensor(x[idx]), tf.convert_to_tensor(y[idx])


def sgd(lr: float) -> keras.optimizers.Optimizer:
    """The optimizer every benchmark uses (SGD with momentum, like PyTorch's)."""
    return keras.optimizers.SGD(learning_rate=lr, momentum=MOMENTUM)


def loss_fn() -> keras.losses.Loss:
    """Cross-entropy on logits, like ``torch.nn.CrossEntropyLoss``."""
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)
