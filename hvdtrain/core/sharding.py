"""Deterministic data sharding: every sample once per epoch, equal step counts on all ranks.

Each epoch, all ranks draw the same permutation (seeded by ``seed + epoch``).
It is cut into global batches of ``size * batch_size`` consecutive indices, and
rank ``r`` takes every ``size``-th index of each global batch starting at ``r``.
So every rank takes the same number of steps (no rank waits in an allreduce
the others skipped), and the union of the shards is the whole data set.
The position within an epoch is counted in global samples, so an epoch can be
resumed mid-way, even with a different world size.
"""
from __future__ import annotations

import math
from typing import Iterator

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
        remaining = self.num_samples - self.start
        if self.drop_last:
            return remaining // self.global_batch_size
        return math.ceil(remaining / self.global_batch_size)

    def global_batches(self) -> Iterator[np.ndarray]:
        """The global batches left in this epoch, as index arrays."""
        order = self.permutation()
        for step in range(len(self)):
            begin = self.start + step * self.global_batch_size
            yield order[begin:begin + self.global_batch_size]

    def __iter__(self) -> Iterator[np.ndarray]:
        """This rank's batches: index arrays, possibly empty on a short final step."""
        for batch in self.global_batches():
            yield batch[self.rank::self.size]

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "samples_seen": self.start, "seed": self.seed}
