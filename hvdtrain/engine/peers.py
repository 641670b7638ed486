"""Point-to-point messages between two ranks, which Horovod lacks: MPI buffer sends through mpi4py;
and small sums over the world on the same communicator, for a pipeline's per-step agreement (an MPI
allreduce of a few numbers takes microseconds; a Horovod one waits for its background thread's cycle).

Each message is a fixed-size int64 header (its meaning is the caller's; its first entry is the
payload's byte count) followed by the payload's raw bytes, both with the same tag, so MPI's
per-pair, per-tag ordering keeps them together. Nothing is pickled. Sends return at once; their
buffers (which may share memory with the caller's tensors: do not change those) are kept until
``flush``. Every wait is watched, so a peer that died or stalled ends this
rank with a message naming the wait instead of a hang.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import numpy as np

HEADER = 10

Watch = Callable[[str], contextlib.AbstractContextManager]


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
        self._pending: list[tuple[Any, tuple[np.ndarray, np.ndarray]]] = []

    def send(self, header: list[int], payload: np.ndarray, dest: int, tag: int) -> None:
        """Start sending ``payload`` (a contiguous uint8 array) to ``dest``, after ``header``."""
        head = np.zeros(HEADER, dtype=np.int64)
        head[0] = payload.nbytes
        head[1:1 + len(header)] = header
        requests = [self.comm.Isend(head, dest=dest, tag=tag), self.comm.Isend(payload, dest=dest, tag=tag)]
        self._pending += [(request, (head, payload)) for request in requests]

    def receive(self, source: int, tag: int, what: str) -> tuple[np.ndarray, np.ndarray]:
        """The next message from ``source`` with ``tag``: (header after the byte count, payload bytes)."""
        head = np.empty(HEADER, dtype=np.int64)
        with self.watch(f"{what} from rank {source}"):
            self.comm.Irecv(head, source=source, tag=tag).Wait()
            payload = np.empty(int(head[0]), dtype=np.uint8)
            self.comm.Irecv(payload, source=source, tag=tag).Wait()
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
