"""Deterministic data sharding: every sample once per epoch, equal step counts on all ranks.

Each epoch, all ranks draw the same permutation (seeded by ``seed + epoch``).
It is cut into global batches of ``size * batch_size`` consecutive indices, and
rank ``r`` takes every ``size``-th index of each global batch starting at ``r``.
So every rank takes the same number of steps (no rank waits in an allreduce
the others skipped), and the union of the shards is the whole data set.
The position within an epoch is counted in global samples, so an epoch can be
resumed mid-way, even with a different world size. A final remainder smaller
than the world size joins the previous global batch. Only when fewer samples
than ranks remain in an epoch (a data set smaller than the world, or a resume
right at an epoch's end on more workers) are those samples skipped.
"""
from __future__ import annotations

import itertools
from collections.abc import Iterator

import numpy as np


class ShardedOrder:
    """The sample order of one rank.

    Args:
        num_samples: size of the data set.
        rank: this worker's rank.
        size: number of workers.
        batch_size: samples per step on each rank.
        shuffle: reshuffle every epoch; otherwise keep data set order.
        seed: base seed, identical on all ranks.
        drop_last: drop the final global batch if it is incomplete.
    """

    def __init__(self, num_samples: int, rank: int, size: int, batch_size: int, shuffle: bool = True,
                 seed: int = 0, drop_last: bool = False) -> None:
        if num_samples < 1:
            raise ValueError("the data set is empty; nothing to shard")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1 (got {batch_size})")
        if not 0 <= rank < size:
            raise ValueError(f"rank {rank} is outside a world of size {size}")
        self.num_samples = num_samples
        self.rank = rank
        self.size = size
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.drop_last = drop_last
        self.epoch = 0
        self.start = 0

    @property
    def global_batch_size(self) -> int:
        return self.size * self.batch_size

    def set_epoch(self, epoch: int, samples_seen: int = 0) -> None:
        """Select the epoch's permutation and skip ``samples_seen`` global samples of it."""
        if not 0 <= samples_seen <= self.num_samples:
            raise ValueError(f"samples_seen={samples_seen} is outside an epoch of {self.num_samples} samples")
        self.epoch = epoch
        self.start = samples_seen

    def permutation(self) -> np.ndarray:
        if not self.shuffle:
            return np.arange(self.num_samples)
        return np.random.RandomState((self.seed + self.epoch) % (2**32)).permutation(self.num_samples)

    def __len__(self) -> int:
        """Steps left in the current epoch (the same on every rank)."""
        return len(self._boundaries()) - 1

    def _boundaries(self) -> list[int]:
        # Global batch edges within the epoch. A final remainder too small to
        # give every rank a sample is merged into the previous batch, so no
        # rank ever gets an empty batch and no sample is skipped.
        remaining = self.num_samples - self.start
        full, tail = divmod(remaining, self.global_batch_size)
        edges = [self.start + i * self.global_batch_size for i in range(full + 1)]
        if tail and not self.drop_last:
            if tail >= self.size or full == 0:
                edges.append(self.num_samples)
            else:
                edges[-1] = self.num_samples
        if full == 0 and tail < self.size:
            return [self.start]  # fewer samples than ranks left: nothing to split evenly
        return edges

    def global_batch_sizes(self) -> list[int]:
        """The sizes of the global batches left in this epoch (no permutation drawn)."""
        return np.diff(self._boundaries()).tolist()

    def global_batches(self) -> Iterator[np.ndarray]:
        """The global batches left in this epoch, as index arrays."""
        order = self.permutation()
        edges = self._boundaries()
        for begin, end in itertools.pairwise(edges):
            yield order[begin:end]

    def __iter__(self) -> Iterator[np.ndarray]:
        """This rank's batches as index arrays (never empty): every ``size``-th index of each global batch."""
        order, rank, size = self.permutation(), self.rank, self.size
        for begin, end in itertools.pairwise(self._boundaries()):
            yield order[begin + rank:end:size]
