"""The core ``Backend`` on top of ``horovod.torch``."""
from __future__ import annotations

import itertools
import os
from collections.abc import Sequence
from typing import Any

import horovod.torch as hvd
import torch

from hvdtrain.core.logs import configure_logging


class HorovodBackend:
    """Collectives of a Horovod job, through ``horovod.torch``. Call ``init()`` first."""

    def __init__(self) -> None:
        if not hvd.is_initialized():
            raise RuntimeError("Horovod is not initialized; call hvdtrain.torch.init() first")
        self.rank = hvd.rank()
        self.size = hvd.size()
        self.local_rank = hvd.local_rank()
        self.local_size = hvd.local_size()
        self._calls = itertools.count()

    def _name(self, kind: str) -> str:
        # Horovod matches collectives by name. Its default name for object
        # collectives is the object's type, which differs across ranks when
        # they pass different kinds of values; a shared counter never does.
        return f"hvdtrain.{kind}.{next(self._calls)}"

    def allreduce_sum(self, values: Sequence[float]) -> list[float]:
        return self._allreduce(values, hvd.Sum)

    def allreduce_max(self, values: Sequence[float]) -> list[float]:
        return self._allreduce(values, hvd.Max)

    def _allreduce(self, values: Sequence[float], op: Any) -> list[float]:
        tensor = torch.tensor([float(v) for v in values], dtype=torch.float64)
        return hvd.allreduce(tensor, op=op).tolist()

    def broadcast_object(self, obj: Any, root: int = 0) -> Any:
        return hvd.broadcast_object(obj, root_rank=root, name=self._name("broadcast_object"))

    def allgather_object(self, obj: Any) -> list[Any]:
        return hvd.allgather_object(obj, name=self._name("allgather_object"))

    def barrier(self) -> None:
        hvd.barrier()


def init(threads_per_worker: int | None = None) -> HorovodBackend:
    """Initialize Horovod, size torch's thread pool, configure logging.

    Args:
        threads_per_worker: intra-op threads per process. Defaults to
            ``OMP_NUM_THREADS`` if set, else the CPU cores divided among the
            local workers, so workers do not fight over cores.

    Returns:
        The job's backend.
    """
    hvd.init()
    torch.set_num_threads(threads_per_worker or _default_threads(hvd.local_size()))
    configure_logging(hvd.rank())
    return HorovodBackend()


def _default_threads(local_size: int) -> int:
    if os.environ.get("OMP_NUM_THREADS", "").isdigit():
        return int(os.environ["OMP_NUM_THREADS"])
    return max(1, (os.cpu_count() or 1) // max(local_size, 1))
