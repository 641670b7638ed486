"""Sharded batches for PyTorch: a fast path for in-memory tensors and a DataLoader sampler."""
from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import Dataset, Sampler, TensorDataset

from hvdtrain.core.sharding import ShardedOrder


class DistributedBatchSampler(Sampler[list[int]]):
    """A batch sampler giving this rank its shard (use as ``DataLoader(batch_sampler=...)``).

    Unlike ``torch.utils.data.DistributedSampler`` it neither pads nor drops:
    every sample is seen exactly once per epoch and all ranks take the same
    number of steps. Call ``set_epoch`` every epoch (the Trainer does).
    """

    def __init__(self, num_samples: int, rank: int, size: int, batch_size: int, shuffle: bool = True,
                 seed: int = 0, drop_last: bool = False) -> None:
        self.order = ShardedOrder(num_samples, rank, size, batch_size, shuffle, seed, drop_last)

    def set_epoch(self, epoch: int, samples_seen: int = 0) -> None:
        self.order.set_epoch(epoch, samples_seen)

    def __len__(self) -> int:
        return len(self.order)

    def __iter__(self) -> Iterator[list[int]]:
        for indices in self.order:
            yield indices.tolist()

    def global_batches(self) -> Iterator[int]:
        """Size of each global batch of the epoch, step by step."""
        for batch in self.order.global_batches():
            yield len(batch)


class TensorBatches:
    """Batches of in-memory tensors by direct indexing (no per-sample Python work).

    Args:
        tensors: tensors with the same first dimension (e.g. inputs, targets), on the CPU or a GPU.
        sampler: the rank's ``DistributedBatchSampler``.
        device: where the model runs. For a GPU, CPU tensors are moved there once when they take at most a
            quarter of its free memory, else pinned once, so that each batch's copy can overlap compute.
    """

    def __init__(self, tensors: Sequence[torch.Tensor], sampler: DistributedBatchSampler,
                 device: torch.device | None = None) -> None:
        self.tensors = _placed(tuple(tensors), device)
        self.sampler = sampler
        self._pinned = tuple(t.device.type == "cpu" and t.is_pinned() for t in self.tensors)  # asked once
        #: Every batch is already on ``device``: nothing to move.
        self.on_device = device is not None and all(t.device == device for t in self.tensors)

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        gpus = sorted({t.device for t in self.tensors if t.device.type == "cuda"}, key=str)
        for indices in self.sampler.order:
            index = torch.from_numpy(indices)
            on_gpu = _indices_on(gpus, index)
            yield tuple([_rows(t, on_gpu.get(t.device, index), pinned)
                         for t, pinned in zip(self.tensors, self._pinned)])


def _indices_on(gpus: list[torch.device], index: torch.Tensor) -> dict[torch.device, torch.Tensor]:
    """``index`` on each of ``gpus``, copied from pinned memory without making the host wait (a copy from
    ordinary memory would be a host synchronisation every batch)."""
    if not gpus:
        return {}
    pinned = index.pin_memory()
    return {gpu: pinned.to(gpu, non_blocking=True) for gpu in gpus}


def _placed(tensors: tuple[torch.Tensor, ...], device: torch.device | None) -> tuple[torch.Tensor, ...]:
    on_host = [t for t in tensors if t.device.type == "cpu"]
    if device is None or device.type != "cuda" or not on_host:
        return tensors
    free, _ = torch.cuda.mem_get_info(device)
    if sum(t.numel() * t.element_size() for t in on_host) <= free // 4:
        return tuple(t.to(device) for t in tensors)
    return tuple(t.pin_memory() if t.device.type == "cpu" else t for t in tensors)


def _rows(tensor: torch.Tensor, index: torch.Tensor, pinned: bool) -> torch.Tensor:
    """The rows ``index`` of ``tensor``; from pinned memory (``pinned``) into pinned memory, so the copy to
    the GPU is asynchronous."""
    if not pinned:
        return tensor.index_select(0, index)
    rows = torch.empty((len(index), *tensor.shape[1:]), dtype=tensor.dtype, pin_memory=True)
    return torch.index_select(tensor, 0, index, out=rows)


def as_tensors(data: object) -> tuple[torch.Tensor, ...] | None:
    """The tensors behind ``data`` if it is a TensorDataset or a tuple of tensors, else None."""
    if isinstance(data, TensorDataset):
        return tuple(data.tensors)
    if isinstance(data, (tuple, list)) and data and all(isinstance(t, torch.Tensor) for t in data):
        lengths = {len(t) for t in data}
        if len(lengths) != 1:
            raise ValueError(f"tensors given as data have different lengths {sorted(lengths)}; "
                             "inputs and targets must have one row per sample")
        return tuple(data)
    return None


def dataset_length(data: object) -> int:
    tensors = as_tensors(data)
    if tensors is not None:
        return len(tensors[0])
    if isinstance(data, Dataset) and hasattr(data, "__len__"):
        return len(data)  # type: ignore[arg-type]
    raise TypeError(f"unsupported data {type(data).__name__}: pass a map-style torch Dataset with __len__, "
                    "a TensorDataset, a tuple of tensors, an IterableDataset or a DataLoader")
