"""The input pipelines the PyTorch Trainer takes, each as this rank's batches of an epoch.

* tensors, a ``TensorDataset`` or a map-style ``Dataset``: sharded by ``DistributedBatchSampler``;
* a user ``DataLoader`` over a map-style Dataset with a standard sampler: re-built around that sampler;
* any other ``DataLoader``, or an ``IterableDataset``: streamed as this rank's own shard. Ranks may get
  different numbers of batches; the Trainer then ends the epoch at the same step on every rank.

Batches may be tensors or tuples, lists and dicts of them (nested); ``to_device`` and ``batch_len``
work on such nests.
"""
from __future__ import annotations

import itertools
import logging
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch.utils.data import BatchSampler, DataLoader, IterableDataset, RandomSampler, SequentialSampler

from hvdtrain.torch.data import DistributedBatchSampler, TensorBatches, as_tensors, dataset_length

log = logging.getLogger(__name__)
_END = object()  # marks an exhausted iterator

# What a re-built DataLoader keeps from the user's (all but the batching and the sampling).
_LOADER_SETTINGS = ("num_workers", "collate_fn", "pin_memory", "timeout", "worker_init_fn",
                    "multiprocessing_context", "generator", "prefetch_factor", "persistent_workers")


def to_device(batch: Any, device: torch.device) -> Any:
    """``batch`` with every tensor in it (tuples, lists, dicts, nested) moved to ``device``."""
    if isinstance(batch, torch.Tensor):
        return batch if batch.device == device else batch.to(device, non_blocking=True)
    if isinstance(batch, (tuple, list)):
        if hasattr(batch, "_fields"):  # a namedtuple
            return type(batch)(*(to_device(value, device) for value in batch))
        return type(batch)(to_device(value, device) for value in batch)
    if isinstance(batch, Mapping):
        return {key: to_device(value, device) for key, value in batch.items()}
    return batch


def batch_len(batch: Any) -> int:
    """Samples in ``batch``: the first dimension of its first tensor, in nesting order.

    Raises:
        TypeError: the batch holds no tensor.
    """
    if isinstance(batch, torch.Tensor):
        if batch.dim() == 0:
            raise TypeError("a 0-dim tensor holds no samples")
        return batch.shape[0]
    values = batch if isinstance(batch, (tuple, list)) else batch.values() if isinstance(batch, Mapping) else ()
    for value in values:
        try:
            return batch_len(value)
        except TypeError:
            continue
    raise TypeError(f"cannot count the samples of a batch of type {type(batch).__name__}: a batch must be a "
                    "tensor or a tuple, list or dict holding tensors")


class ShardedInput:
    """Map-style data sharded over the ranks: every rank takes the same number of steps.

    Args:
        batches: iterable of this rank's batches (``TensorBatches`` or a ``DataLoader``) over ``sampler``.
        sampler: the rank's ``DistributedBatchSampler``.
    """

    streaming = False

    def __init__(self, batches: Any, sampler: DistributedBatchSampler) -> None:
        self.batches = batches
        self.sampler = sampler
        #: The batches are already where the model runs (in-memory tensors placed there once).
        self.on_device = getattr(batches, "on_device", False)

    def set_epoch(self, epoch: int, samples_seen: int, batches_done: int) -> int:
        """Position on ``epoch`` after ``samples_seen`` global samples; returns the steps left."""
        self.sampler.set_epoch(epoch, samples_seen)
        return len(self.sampler)

    def __iter__(self) -> Iterator[tuple[Any, bool]]:
        """(batch, whether another follows) for this rank's remaining batches."""
        return zip(self.batches, itertools.repeat(True))

    def global_sizes(self) -> Iterator[int]:
        return self.sampler.global_batches()


class StreamingInput:
    """A loader whose batches this rank streams as its own shard; the number of batches is not known.

    Args:
        loader: any iterable of batches (a ``DataLoader``); ``set_epoch`` on it, its sampler or its
            dataset is called every epoch when they have one.
    """

    streaming = True
    on_device = False

    def __init__(self, loader: Any) -> None:
        self.loader = loader
        self.skip = 0

    def set_epoch(self, epoch: int, samples_seen: int, batches_done: int) -> None:
        """Start ``epoch``, skipping the ``batches_done`` batches a resumed run already trained on."""
        for owner in (self.loader, getattr(self.loader, "sampler", None), getattr(self.loader, "dataset", None)):
            if callable(getattr(owner, "set_epoch", None)):
                owner.set_epoch(epoch)
        self.skip = batches_done

    def __iter__(self) -> Iterator[tuple[Any, bool]]:
        """(batch, whether this rank has another one): one batch of look-ahead."""
        batches = iter(self.loader)
        for _ in range(self.skip):
            next(batches, None)
        current = next(batches, _END)
        while current is not _END:
            following = next(batches, _END)
            yield current, following is not _END
            current = following



def make_input(data: Any, rank: int, size: int, batch_size: int, *, shuffle: bool, seed: int,
               num_workers: int = 0, pin_memory: bool = False,
               device: torch.device | None = None) -> ShardedInput | StreamingInput:
    """This rank's input for ``data``: tensors, a map-style or iterable Dataset, or a DataLoader (``device``:
    the model's, where in-memory tensors are placed once; see ``TensorBatches``)."""
    if isinstance(data, DataLoader):
        return _from_loader(data, rank, size, seed)
    if isinstance(data, IterableDataset):
        # Workers forked per epoch: a kept worker would hold a copy of the dataset that misses set_epoch.
        return StreamingInput(DataLoader(data, batch_size=batch_size, num_workers=num_workers, pin_memory=pin_memory))
    sampler = DistributedBatchSampler(dataset_length(data), rank, size, batch_size, shuffle=shuffle, seed=seed)
    tensors = as_tensors(data)
    if tensors is not None:
        return ShardedInput(TensorBatches(tensors, sampler, device), sampler)
    # Workers forked once and kept (the sampler runs here): a fork of a process running MPI and Horovod's
    # threads costs time and risks a child that inherits a held lock.
    return ShardedInput(DataLoader(data, batch_sampler=sampler, num_workers=num_workers, pin_memory=pin_memory,
                                   persistent_workers=num_workers > 0), sampler)


def _from_loader(loader: DataLoader, rank: int, size: int, seed: int) -> ShardedInput | StreamingInput:
    """Re-shard a user DataLoader by swapping in a distributed sampler, or stream it as this rank's shard."""
    reason = _why_not_reshardable(loader)
    if reason is not None:
        if size > 1:
            log.warning("hvdtrain cannot re-shard this DataLoader (%s); each rank uses it as its own shard, so "
                        "make it yield this rank's part of the data (e.g. with a DistributedSampler)", reason)
        return StreamingInput(loader)
    sampler = DistributedBatchSampler(len(loader.dataset), rank, size, loader.batch_size,
                                      shuffle=isinstance(loader.sampler, RandomSampler), seed=seed,
                                      drop_last=loader.drop_last)
    settings = {name: getattr(loader, name) for name in _LOADER_SETTINGS if hasattr(loader, name)}
    if not settings.get("num_workers"):
        settings.pop("prefetch_factor", None)
        settings.pop("persistent_workers", None)
    return ShardedInput(DataLoader(loader.dataset, batch_sampler=sampler, **settings), sampler)


def _why_not_reshardable(loader: DataLoader) -> str | None:
    if isinstance(loader.dataset, IterableDataset):
        return "it reads an IterableDataset"
    if not hasattr(loader.dataset, "__len__"):
        return "its dataset has no __len__"
    if loader.batch_size is None or type(loader.batch_sampler) is not BatchSampler:
        return "it has a custom batch_sampler"
    if type(loader.sampler) not in (RandomSampler, SequentialSampler):
        return f"it has a custom sampler ({type(loader.sampler).__name__})"
    return None
