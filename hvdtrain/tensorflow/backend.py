"""The TensorFlow backends: every collective the TensorFlow adapter runs, on Horovod or in one process.

Gradients, broadcasts and metrics all go through the backend a Trainer, ``fit`` or a
``DistributedOptimizer`` was given; this module (and no other TensorFlow module) imports Horovod.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypeVar

import horovod.tensorflow as hvd
import tensorflow as tf
from horovod.common.elastic import State as HorovodState
from horovod.common.elastic import run_fn
from horovod.common.exceptions import HorovodInternalError

from hvdtrain.core.backend import Backend
from hvdtrain.core.backend import SerialBackend as CoreSerialBackend
from hvdtrain.core.logs import configure_logging
from hvdtrain.engine.horovod_backend import HorovodBackendBase, default_threads

log = logging.getLogger("hvdtrain")
T = TypeVar("T")
_COMPRESSION = {"none": hvd.Compression.none, "fp16": hvd.Compression.fp16}


class TensorFlowBackend(Backend, Protocol):
    """What the TensorFlow adapter asks of a backend beyond the core's collectives (``HorovodBackend``,
    ``SerialBackend``; ``tests/test_backend_contract.py`` checks both)."""

    def grouped_allreduce(self, tensors: list[tf.Tensor], compression: str, prescale_factor: float,
                          postscale_factor: float) -> list[tf.Tensor]:
        """Sum tensors of one dtype over ranks in one collective, scaled before and after; eager or traced."""

    def broadcast_variables(self, variables: list[tf.Variable], root: int = 0) -> None:
        """Assign ``root``'s values to ``variables`` on every rank."""


class HorovodBackend(HorovodBackendBase):
    """Collectives of a Horovod job through ``horovod.tensorflow``. Call ``init()`` first.

    Every method is a collective (all ranks call it in the same order) and
    runs eagerly, outside any ``tf.function``.
    """

    def __init__(self) -> None:
        super().__init__(hvd, "hvdtrain.tensorflow.init()", HorovodState)

    def allreduce_floats(self, values: Sequence[float], op: Any, name: str) -> list[float]:
        tensor = tf.constant([float(v) for v in values], dtype=tf.float64)
        return [float(v) for v in hvd.allreduce(tensor, op=op, name=name).numpy()]

    def elastic_loop(self, attempt: Callable[[Any], T]) -> Callable[[Any], T]:
        # Not horovod.tensorflow's elastic run: it returns None for an UnknownError whose message names
        # none of a few Horovod ops (the grouped allreduce of a compiled step, or any error of the
        # user's), which would end training silently. ``recoverable`` tells Horovod's errors instead.
        return run_fn(attempt, _restart_horovod)

    def recoverable(self, run: Callable[[], T]) -> T:
        # A Horovod op fails with TensorFlow's UnknownError; other UnknownErrors go on up as they are.
        try:
            return run()
        except tf.errors.UnknownError as error:
            if "Horovod" not in error.message:
                raise
            raise HorovodInternalError(error) from error

    def grouped_allreduce(self, tensors: list[tf.Tensor], compression: str, prescale_factor: float,
                          postscale_factor: float) -> list[tf.Tensor]:
        """Sum tensors of one dtype over ranks in one collective, scaled before and after; eager or traced."""
        return hvd.grouped_allreduce(tensors, op=hvd.Sum, compression=_COMPRESSION[compression],
                                     prescale_factor=prescale_factor, postscale_factor=postscale_factor)

    def broadcast_variables(self, variables: list[tf.Variable], root: int = 0) -> None:
        """Assign ``root``'s values to ``variables`` on every rank (plain ``tf.Variable`` objects)."""
        with self.watch("the initial broadcast of the model and optimizer"):
            hvd.broadcast_variables(variables, root_rank=root)


class SerialBackend(CoreSerialBackend):
    """The TensorFlow collectives of a one-process job, without Horovod: for tests and notebooks."""

    def grouped_allreduce(self, tensors: list[tf.Tensor], compression: str, prescale_factor: float,
                          postscale_factor: float) -> list[tf.Tensor]:
        return [t * prescale_factor * postscale_factor for t in tensors]

    def broadcast_variables(self, variables: list[tf.Variable], root: int = 0) -> None:
        return None


def _restart_horovod() -> None:
    """Rebuild Horovod's world after a lost or added worker (what horovod.tensorflow's elastic run does)."""
    hvd.shutdown()
    hvd.init()


def default_backend() -> TensorFlowBackend:
    """The backend of a Horovod job, for the adapters' ``backend=None`` (call ``init()`` first)."""
    return HorovodBackend()


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
    backend = HorovodBackend()
    _pin_gpu(backend.local_rank)
    _set_threads(threads_per_worker or default_threads(backend.local_size))
    configure_logging(backend.rank)
    return backend


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
