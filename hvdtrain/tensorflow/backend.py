"""The core ``Backend`` on top of ``horovod.tensorflow``, and ``init()``."""
from __future__ import annotations

import itertools
import logging
import os
from collections.abc import Sequence
from typing import Any

import horovod.tensorflow as hvd
import tensorflow as tf

from hvdtrain.core.logs import configure_logging

log = logging.getLogger("hvdtrain")


class HorovodBackend:
    """Collectives of a Horovod job through ``horovod.tensorflow``. Call ``init()`` first.

    Every method is a collective (all ranks call it in the same order) and
    runs eagerly, outside any ``tf.function``.
    """

    def __init__(self) -> None:
        if not hvd.is_initialized():
            raise RuntimeError("Horovod is not initialized; call hvdtrain.tensorflow.init() first")
        self.rank = hvd.rank()
        self.size = hvd.size()
        self.local_rank = hvd.local_rank()
        self.local_size = hvd.local_size()
        self._calls = itertools.count()

    def _name(self, kind: str) -> str:
        # Horovod matches collectives by name; a counter shared by all ranks never clashes.
        return f"hvdtrain.{kind}.{next(self._calls)}"

    def allreduce_sum(self, values: Sequence[float]) -> list[float]:
        return self._allreduce(values, hvd.Sum, "allreduce_sum")

    def allreduce_max(self, values: Sequence[float]) -> list[float]:
        return self._allreduce(values, hvd.Max, "allreduce_max")

    def _allreduce(self, values: Sequence[float], op: Any, kind: str) -> list[float]:
        tensor = tf.constant([float(v) for v in values], dtype=tf.float64)
        return [float(v) for v in hvd.allreduce(tensor, op=op, name=self._name(kind)).numpy()]

    def broadcast_object(self, obj: Any, root: int = 0) -> Any:
        return hvd.broadcast_object(obj, root_rank=root, name=self._name("broadcast_object"))

    def allgather_object(self, obj: Any) -> list[Any]:
        return hvd.allgather_object(obj, name=self._name("allgather_object"))

    def barrier(self) -> None:
        # horovod.tensorflow has no barrier op; a one-element allreduce blocks the same way.
        self._allreduce([0.0], hvd.Sum, "barrier")


def init(threads_per_worker: int | None = None) -> HorovodBackend:
    """Initialize Horovod, pin a GPU per worker, size TensorFlow's thread pools, configure logging.

    Call it first thing, before building any model: TensorFlow fixes its
    thread pools and visible devices when it runs its first op.

    Args:
        threads_per_worker: intra- and inter-op threads per process. Defaults
            to ``OMP_NUM_THREADS`` if set, else the CPU cores divided among
            the local workers, so workers do not fight over cores.

    Returns:
        The job's backend.
    """
    hvd.init()
    _pin_gpu(hvd.local_rank())
    _set_threads(threads_per_worker or _default_threads(hvd.local_size()))
    configure_logging(hvd.rank())
    return HorovodBackend()


def _default_threads(local_size: int) -> int:
    if os.environ.get("OMP_NUM_THREADS", "").isdigit():
        return max(1, int(os.environ["OMP_NUM_THREADS"]))
    return max(1, (os.cpu_count() or 1) // max(local_size, 1))


def _set_threads(threads: int) -> None:
    threading = tf.config.threading
    try:
        threading.set_intra_op_parallelism_threads(threads)
        threading.set_inter_op_parallelism_threads(threads)
    except RuntimeError:
        current = (threading.get_intra_op_parallelism_threads(), threading.get_inter_op_parallelism_threads())
        if current != (threads, threads):
            log.warning("TensorFlow already started with %s intra/inter-op threads, so %d per worker could not "
                        "be set; call hvdtrain.tensorflow.init() before building models or running ops",
                        current, threads)


def _pin_gpu(local_rank: int) -> None:
    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        return
    try:
        tf.config.set_visible_devices(gpus[local_rank % len(gpus)], "GPU")
        for gpu in tf.config.get_visible_devices("GPU"):
            tf.config.experimental.set_memory_growth(gpu, True)
    except RuntimeError:
        log.warning("TensorFlow already started, so this worker could not be pinned to GPU %d; call "
                    "hvdtrain.tensorflow.init() before building models", local_rank % len(gpus))
