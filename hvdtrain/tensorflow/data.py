"""Sharded input for TensorFlow: in-memory arrays through ``ShardedOrder``, and ``tf.data`` sharding."""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import tensorflow as tf

from hvdtrain.core.backend import Backend
from hvdtrain.core.sharding import ShardedOrder


def shard_dataset(dataset: tf.data.Dataset, backend: Backend) -> tf.data.Dataset:
    """This rank's shard of ``dataset``: every ``size``-th element starting at ``rank``.

    Shard first, before shuffling and batching, so each element is read by
    exactly one rank. The shards can differ by one element, so the ranks'
    batch counts can differ by one: give ``model.fit`` a ``steps_per_epoch``
    every rank can reach (``hvdtrain.tensorflow.fit`` agrees on one), or batch
    with ``drop_remainder=True`` on equal-sized shards. For exact, resumable
    epochs over in-memory data use ``ShardedArrays`` instead.
    """
    return dataset.shard(backend.size, backend.rank)


def check_elastic_input(backend: Backend, **inputs: Any) -> None:
    """Under elastic training, refuse ``tf.data.Dataset`` inputs (keyword: the argument's name).

    A dataset is one rank's shard of a fixed world, which cannot be re-sharded when workers come
    and go; in-memory arrays are sharded anew for every world.
    """
    if not getattr(backend, "elastic", False):
        return
    for name, data in inputs.items():
        if isinstance(data, tf.data.Dataset):
            raise ValueError(f"elastic training needs {name} as in-memory arrays (x, y), not a tf.data.Dataset: "
                             "a dataset is one rank's shard, which cannot be re-sharded when workers come and go")


def num_samples(arrays: Any) -> int:
    """The common first dimension of a nest of arrays.

    Raises:
        ValueError: arrays of different lengths, or no arrays at all.
    """
    lengths = {len(a) for a in tf.nest.flatten(arrays)}
    if not lengths:
        raise ValueError("no input arrays given")
    if len(lengths) != 1:
        raise ValueError(f"input arrays have different lengths {sorted(lengths)}; inputs and targets "
                         "must have one row per sample")
    return lengths.pop()


def take(arrays: Any, indices: np.ndarray) -> Any:
    """Rows ``indices`` of every array in a nest (NumPy fancy indexing, or ``tf.gather`` for tensors)."""
    def rows(a: Any) -> Any:
        return a[indices] if isinstance(a, np.ndarray) else tf.gather(a, indices)

    return tf.nest.map_structure(rows, arrays)


def as_arrays(data: Any) -> Any:
    """A nest of NumPy arrays from NumPy arrays, tensors or lists (tensors are copied to host)."""
    def convert(a: Any) -> np.ndarray:
        return a.numpy() if isinstance(a, (tf.Tensor, tf.Variable)) else np.asarray(a)

    return tf.nest.map_structure(convert, data)


def batch_signature(arrays: Any) -> Any:
    """``tf.TensorSpec`` of a batch of ``arrays``, with an unknown batch dimension."""
    def spec(a: np.ndarray) -> tf.TensorSpec:
        return tf.TensorSpec((None, *a.shape[1:]), tf.as_dtype(a.dtype))

    return tf.nest.map_structure(spec, arrays)


class ShardedArrays:
    """This rank's batches of in-memory arrays, in ``ShardedOrder``.

    Every rank passes the whole data set; each takes its shard of every
    global batch, so all ranks take the same number of steps, every sample is
    seen once per epoch, and an epoch can be resumed at any step.

    Args:
        arrays: a nest (tuple, dict, ...) of NumPy arrays with one row per sample.
        batch_size: samples per step on each rank.
        rank: this worker's rank.
        size: number of workers.
        shuffle: reshuffle every epoch (seeded by ``seed + epoch``).
        seed: identical on every rank.
        drop_last: drop an incomplete final global batch.
    """

    def __init__(self, arrays: Any, batch_size: int, rank: int, size: int, shuffle: bool = True,
                 seed: int = 0, drop_last: bool = False) -> None:
        self.arrays = as_arrays(arrays)
        self.order = ShardedOrder(num_samples(self.arrays), rank, size, batch_size, shuffle, seed, drop_last)
        self.steps_per_epoch = len(self.order)

    @property
    def step_sizes(self) -> list[tuple[int, int]]:
        """``(this rank's samples, all ranks' samples)`` of each step left in the epoch."""
        rank, size = self.order.rank, self.order.size
        return [(len(range(rank, total, size)), total) for total in self.order.global_batch_sizes()]

    def set_epoch(self, epoch: int, samples_seen: int = 0) -> None:
        """Select the epoch's order and skip the first ``samples_seen`` global samples."""
        self.order.set_epoch(epoch, samples_seen)

    def __len__(self) -> int:
        """Steps left in the current epoch (the same on every rank)."""
        return len(self.order)

    def __iter__(self) -> Iterator[tuple[Any, int]]:
        """``(batch, global_batch_size)`` for each step left in the epoch."""
        rank, size = self.order.rank, self.order.size
        for indices in self.order.global_batches():
            yield take(self.arrays, indices[rank::size]), len(indices)

    def dataset(self, first_epoch: int = 0, samples_seen: int = 0, epochs: int | None = None) -> tf.data.Dataset:
        """This rank's batches for ``model.fit``, epoch after epoch from ``first_epoch`` (endless by default).

        The first epoch skips its first ``samples_seen`` global samples (a
        resumed epoch: ``set_epoch(first_epoch, samples_seen)`` then ``len``
        gives its steps); the others are whole, ``steps_per_epoch`` steps each.
        Python computes each epoch's row indices once; TensorFlow gathers the
        rows. (A per-step Python generator added 40 ms to a 130 ms step of the
        benchmark MLP.)
        """
        def epoch_rows(epoch: tf.Tensor) -> tuple[np.ndarray, np.ndarray]:
            order = ShardedOrder(self.order.num_samples, self.order.rank, self.order.size, self.order.batch_size,
                                 self.order.shuffle, self.order.seed, self.order.drop_last)
            order.set_epoch(int(epoch), samples_seen if int(epoch) == first_epoch else 0)
            steps = [np.asarray(rows, dtype=np.int64) for rows in order]
            return np.concatenate(steps), np.array([len(rows) for rows in steps], dtype=np.int64)

        def steps_of_epoch(epoch: tf.Tensor) -> tf.data.Dataset:
            flat, lengths = tf.py_function(epoch_rows, [epoch], (tf.int64, tf.int64))
            flat.set_shape([None])
            lengths.set_shape([None])
            return tf.data.Dataset.from_tensor_slices(tf.RaggedTensor.from_row_lengths(flat, lengths))

        tensors = tf.nest.map_structure(tf.convert_to_tensor, self.arrays)

        def gather(rows: Any) -> Any:
            rows = tf.reshape(rows if isinstance(rows, tf.Tensor) else rows.flat_values, [-1])
            return _as_fit_batch(tf.nest.map_structure(lambda t: tf.gather(t, rows), tensors))

        last = 2**62 if epochs is None else first_epoch + epochs
        return tf.data.Dataset.range(first_epoch, last).flat_map(steps_of_epoch).map(gather).prefetch(2)


def _as_fit_batch(batch: Any) -> Any:
    # Keras reads a tuple as (x,), (x, y) or (x, y, sample_weight); anything else is x alone.
    return tuple(batch) if isinstance(batch, (tuple, list)) else (batch,)


def contiguous_shard(arrays: Any, rank: int, size: int) -> tuple[Any, int]:
    """This rank's contiguous slice of ``arrays`` (sizes differ by at most one) and its length."""
    bounds = np.linspace(0, num_samples(arrays), size + 1).round().astype(int)
    part = np.arange(bounds[rank], bounds[rank + 1])
    return take(as_arrays(arrays), part), len(part)


def dataset_signature(dataset: tf.data.Dataset, name: str) -> tuple[Any, Any]:
    """``(x_spec, y_spec)`` of a dataset of ``(x, y)`` batches, with an unknown batch dimension.

    Raises:
        TypeError: the dataset's elements are not ``(x, y)`` pairs of tensors.
    """
    spec = dataset.element_spec
    if not isinstance(spec, tuple) or len(spec) != 2:
        raise TypeError(f"{name} must yield (x, y) batches (its element_spec is {spec}); map it to pairs, "
                        "e.g. dataset.map(lambda d: (d['x'], d['y']))")

    def relax(s: Any) -> tf.TensorSpec:
        if not isinstance(s, tf.TensorSpec):
            raise TypeError(f"{name} yields a {type(s).__name__}; the Trainer takes dense tensors only")
        if s.shape.rank == 0:
            raise TypeError(f"{name} yields scalars: batch it first (dataset.batch(batch_size))")
        return tf.TensorSpec((None, *s.shape[1:]), s.dtype)

    return tf.nest.map_structure(relax, spec)


class DatasetBatches:
    """This rank's batches of a ``tf.data.Dataset`` (its own shard, already batched), equal steps on all ranks.

    The ranks agree on the steps per epoch once: the fewest batches any
    rank's dataset has, or ``steps_per_epoch`` (the same on every rank) when
    a length is unknown. Each epoch iterates the dataset anew; a rank with
    more batches leaves its extra ones out of that epoch. Batches count as
    ``local * size`` global samples (the ranks' batch sizes are not exchanged).

    Args:
        dataset: elements ``(x, y)``, each a batch.
        backend: the backend the ranks agree through (one ``allgather_object``).
        steps_per_epoch: batches per epoch, needed when the dataset's length is unknown.
        name: the argument's name, for errors.
    """

    def __init__(self, dataset: tf.data.Dataset, backend: Backend, steps_per_epoch: int | None = None,
                 name: str = "train_data") -> None:
        self.signature = dataset_signature(dataset, name)
        self.dataset, self.size = dataset, backend.size
        self.steps_per_epoch = agreed_dataset_steps(dataset, backend, steps_per_epoch, name)
        self.skip = 0

    def set_epoch(self, batches_done: int = 0) -> int:
        """Start an epoch after its first ``batches_done`` batches; returns the steps left (same on all ranks)."""
        self.skip = batches_done
        return self.steps_per_epoch - batches_done

    def __iter__(self) -> Iterator[tuple[Any, int]]:
        """``((x, y), global_batch_size)`` for each step left in the epoch."""
        left = self.steps_per_epoch - self.skip
        count = 0
        for batch in self.dataset.skip(self.skip).take(left):
            count += 1
            yield batch, num_samples(batch[1]) * self.size
        if count < left:
            raise RuntimeError(f"this rank's dataset ended after {self.skip + count} of the agreed "
                               f"{self.steps_per_epoch} batches per epoch: pass a steps_per_epoch every rank's "
                               "shard reaches")


def agreed_dataset_steps(dataset: tf.data.Dataset, backend: Backend, steps_per_epoch: int | None,
                         name: str = "train_data") -> int:
    """Batches per epoch that every rank's ``dataset`` has, decided identically on every rank.

    Every rank gathers all ranks' lengths and ``steps_per_epoch`` first and
    checks them after, so a bad value raises on all ranks alike.

    Raises:
        ValueError: ranks passed different ``steps_per_epoch``; a length is unknown
            and none was given; it exceeds some rank's batches; some rank has none.
    """
    gathered = backend.allgather_object((int(dataset.cardinality()), steps_per_epoch))
    counts = [count for count, _ in gathered]
    requested = sorted({steps for _, steps in gathered}, key=str)
    if len(requested) > 1:
        raise ValueError(f"the ranks passed different steps_per_epoch {requested}: pass the same on every rank")
    known = [count for count in counts if count >= 0]
    steps = requested[0]
    if steps is None:
        if len(known) < len(counts):
            unknown = [rank for rank, count in enumerate(counts) if count < 0]
            raise ValueError(f"{name}'s length is unknown on rank(s) {unknown}: pass steps_per_epoch= "
                             "(the same on every rank)")
        steps = min(counts)
    elif known and steps > min(known):
        raise ValueError(f"steps_per_epoch={steps} but rank {counts.index(min(known))}'s {name} has only "
                         f"{min(known)} batches: pass at most {min(known)}")
    if steps < 1:
        raise ValueError(f"some rank's {name} has no batches (lengths per rank: {counts}); shard before batching "
                         "and check the data size")
    return steps
