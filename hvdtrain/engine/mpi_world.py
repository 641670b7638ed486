"""The whole job's collectives over mpi4py, for a pipeline, where Horovod's world is one stage's replicas.

Horovod's background thread negotiates with every rank of its world at each cycle, even with nothing to
reduce. Across pipeline stages that traffic is pure cost: the stages exchange activations point to point,
and only a stage's replicas reduce gradients together. So a pipeline starts Horovod on each stage's
replicas alone, and the few world-wide operations (agreements, metrics, checkpoint coordination) go
over MPI directly, on a communicator of their own.
"""
from __future__ import annotations

import pickle
from typing import Any

import cloudpickle
import numpy as np


class MpiWorld:
    """Rank facts and world collectives on ``comm`` (an mpi4py communicator of every rank).

    Args:
        mpi: mpi4py's ``MPI`` module.
        comm: the world's communicator (a duplicate: no other library's messages can match these).
    """

    def __init__(self, mpi: Any, comm: Any) -> None:
        self.mpi, self.comm = mpi, comm
        self.rank, self.size = comm.Get_rank(), comm.Get_size()
        node = comm.Split_type(mpi.COMM_TYPE_SHARED, key=self.rank)
        self.local_rank, self.local_size = node.Get_rank(), node.Get_size()
        node.Free()
        self._ops = {"sum": mpi.SUM, "max": mpi.MAX}
        # Objects travel as Horovod's object collectives send them: cloudpickled (a callback's state may hold
        # a lambda, which plain pickle refuses), read back by pickle (cloudpickle writes plain pickle streams).
        mpi.pickle.__init__(cloudpickle.dumps, pickle.loads)

    def reduce(self, values: np.ndarray, op: str) -> np.ndarray:
        """Element-wise ``op`` ("sum" or "max") of every rank's ``values``."""
        values = np.ascontiguousarray(values)
        total = np.empty_like(values)
        self.comm.Allreduce(values, total, op=self._ops[op])
        return total

    def broadcast_object(self, obj: Any, root: int) -> Any:
        return self.comm.bcast(obj, root=root)

    def allgather_object(self, obj: Any) -> list[Any]:
        return self.comm.allgather(obj)
