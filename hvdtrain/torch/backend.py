"""The core ``Backend`` on top of ``horovod.torch``."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import horovod.torch as hvd
import torch

from hvdtrain.core.horovod_backend import HorovodBackendBase, default_threads
from hvdtrain.core.logs import configure_logging


class HorovodBackend(HorovodBackendBase):
    """Collectives of a Horovod job, through ``horovod.torch``. Call ``init()`` first."""

    def __init__(self) -> None:
        super().__init__(hvd, "hvdtrain.torch.init()")

    def allreduce_floats(self, values: Sequence[float], op: Any, name: str) -> list[float]:
        tensor = torch.tensor([float(v) for v in values], dtype=torch.float64)
        return hvd.allreduce(tensor, op=op, name=name).tolist()


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
    torch.set_num_threads(threads_per_worker or default_threads(hvd.local_size()))
    configure_logging(hvd.rank())
    return HorovodBackend()
