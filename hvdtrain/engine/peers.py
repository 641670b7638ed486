"""Point-to-point messages between two ranks, which Horovod lacks: MPI buffer sends through mpi4py;
and small sums over the world on the same communicator, for a pipeline's per-step agreement (an MPI
allreduce of a few numbers takes microseconds; a Horovod one waits for its background thread's cycle).

Each message is a fixed-size int64 header (its meaning is the caller's; its first entry is the
payload's byte count) followed by the payload's raw bytes, both with the same tag, so MPI's
per-pair, per-tag ordering keeps them together. Nothing is pickled. A payload is any buffer MPI takes:
a NumPy array, or GPU memory when MPI is CUDA-aware (``mpi_cuda_aware``). Sends return at once; their
buffers (which may share memory with the caller's tensors: do not change those) are kept until
``flush``. Every wait is watched, so a peer that died or stalled ends this
rank with a message naming the wait instead of a hang.
"""
from __future__ import annotations

import contextlib
import ctypes
import functools
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

HEADER = 10
CUDA_AWARE_VARIABLE = "HVDTRAIN_CUDA_AWARE_MPI"

Watch = Callable[[str], contextlib.AbstractContextManager]
Allocate = Callable[[int], tuple[Any, Any]]  # byte count -> (the buffer MPI fills, what the caller gets back)


def _host_bytes(nbytes: int) -> tuple[np.ndarray, np.ndarray]:
    buffer = np.empty(nbytes, dtype=np.uint8)
    return buffer, buffer


def loaded_mpi_libraries(maps: Path = Path("/proc/self/maps")) -> list[str]:
    """The MPI libraries (``libmpi*.so*``: Open MPI's, Cray's, Spectrum's) mapped into this process, once
    mpi4py has started MPI."""
    try:
        lines = maps.read_text().splitlines()
    except OSError:
        return []
    paths = (line.split(maxsplit=5)[-1] for line in lines if line.count(" ") >= 5)
    return list(dict.fromkeys(p for p in paths if Path(p).name.startswith("libmpi") and ".so" in Path(p).name))


def mpi_cuda_aware(env: Mapping[str, str] = os.environ) -> bool:
    """Whether this process's MPI takes CUDA memory: Open MPI's ``MPIX_Query_cuda_support()`` (built with
    CUDA and enabled at run time), False for an MPI without that query. ``HVDTRAIN_CUDA_AWARE_MPI=1`` or
    ``0`` decides instead. Call it after MPI has started.

    Raises:
        ValueError: the variable is set to something else.
    """
    forced = env.get(CUDA_AWARE_VARIABLE, "").strip()
    if forced:
        if forced not in ("0", "1"):
            raise ValueError(f"{CUDA_AWARE_VARIABLE}={forced!r}: set it to 1 (MPI takes CUDA memory), 0 (stage GPU "
                             "tensors through pinned host memory), or leave it unset to ask MPI")
        return forced == "1"
    for path in loaded_mpi_libraries():
        try:
            query = ctypes.CDLL(path).MPIX_Query_cuda_support
        except (OSError, AttributeError):
            continue
        query.restype = ctypes.c_int
        return bool(query())
    return False


class PeerChannel:
    """Messages to and from other ranks of ``comm`` (an mpi4py communicator of the whole world).

    Args:
        mpi: mpi4py's ``MPI`` module.
        comm: the communicator (its own duplicate, so no other library's messages can match ours).
        watch: the backend's ``watch(what)``, timing every wait.
    """

    def __init__(self, mpi: Any, comm: Any, watch: Watch) -> None:
        self.mpi = mpi
        self.comm = comm
        self.watch = watch
        self._pending: list[tuple[Any, tuple[Any, ...]]] = []

    @functools.cached_property
    def cuda_aware(self) -> bool:
        """Whether this channel may be given CUDA memory (``mpi_cuda_aware``)."""
        return mpi_cuda_aware()

    def send(self, header: list[int], payload: Any, dest: int, tag: int, keep: Any = None) -> None:
        """Start sending ``payload`` (a contiguous byte buffer with ``nbytes``) to ``dest``, after ``header``;
        ``payload`` and ``keep`` (the memory behind it, if another object owns it) live until ``flush``."""
        head = np.zeros(HEADER, dtype=np.int64)
        head[0] = payload.nbytes
        head[1:1 + len(header)] = header
        requests = [self.comm.Isend(head, dest=dest, tag=tag), self.comm.Isend(payload, dest=dest, tag=tag)]
        self._pending += [(request, (head, payload, keep)) for request in requests]

    def receive(self, source: int, tag: int, what: str, allocate: Allocate = _host_bytes) -> tuple[np.ndarray, Any]:
        """The next message from ``source`` with ``tag``: (header after the byte count, the payload as
        ``allocate(byte count)`` gave it back, after MPI filled its buffer)."""
        head = np.empty(HEADER, dtype=np.int64)
        with self.watch(f"{what} from rank {source}"):
            self.comm.Irecv(head, source=source, tag=tag).Wait()
            buffer, payload = allocate(int(head[0]))
            self.comm.Irecv(buffer, source=source, tag=tag).Wait()
        return head[1:], payload

    def sum(self, values: np.ndarray, what: str) -> np.ndarray:
        """Collective: the element-wise sum of every rank's float64 ``values``."""
        total = np.empty_like(values)
        with self.watch(what):
            self.comm.Allreduce(np.ascontiguousarray(values), total, op=self.mpi.SUM)
        return total

    def flush(self, what: str = "the pipeline's sends") -> None:
        """Wait until every started send has left this rank's buffers."""
        if not self._pending:
            return
        with self.watch(what):
            for request, _ in self._pending:
                request.Wait()
        self._pending.clear()
