"""The PyTorch backends: every collective the PyTorch adapter runs, on Horovod or in one process.

Gradients, the non-finite flag, broadcasts and metrics all go through the backend a Trainer was
given; this module (and no other PyTorch module) imports Horovod.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any, Protocol

import horovod.torch as hvd
import torch
from horovod.common.elastic import State as HorovodState

from hvdtrain.core.backend import Backend
from hvdtrain.core.backend import SerialBackend as CoreSerialBackend
from hvdtrain.core.logs import configure_logging
from hvdtrain.engine.horovod_backend import HorovodBackendBase, default_threads
from hvdtrain.torch.named_optimizers import by_name, parameters_of

_COMPRESSION = {"none": hvd.Compression.none, "fp16": hvd.Compression.fp16}
_OPS = {"average": hvd.Average, "sum": hvd.Sum, "adasum": hvd.Adasum}


class TorchBackend(Backend, Protocol):
    """What the PyTorch adapter asks of a backend beyond the core's collectives (``HorovodBackend``,
    ``SerialBackend``; ``tests/test_backend_contract.py`` checks both)."""

    def distributed_optimizer(self, optimizer: torch.optim.Optimizer, model: torch.nn.Module | None, *,
                              compression: str, op: str, backward_passes_per_step: int,
                              gradient_predivide_factor: float) -> torch.optim.Optimizer:
        """``optimizer`` with its gradients averaged over ranks, and Horovod's ``synchronize`` API."""

    def broadcast_state(self, model: torch.nn.Module, optimizer: Any, root: int = 0) -> None:
        """Make every rank's model and optimizer state equal to ``root``'s."""

    def start_max(self, tensor: torch.Tensor, name: str) -> Any:
        """Start an element-wise max over ranks; ``wait(handle)`` returns it."""

    def start_sum(self, tensor: torch.Tensor, name: str) -> Any:
        """Start an element-wise sum over ranks; ``wait(handle)`` returns it."""

    def wait(self, handle: Any) -> torch.Tensor:
        """The result of a ``start_max``/``start_sum``."""


class HorovodBackend(HorovodBackendBase):
    """Collectives of a Horovod job, through ``horovod.torch``. Call ``init()`` first."""

    def __init__(self) -> None:
        super().__init__(hvd, "hvdtrain.torch.init()", HorovodState)

    def allreduce_floats(self, values: Sequence[float], op: Any, name: str) -> list[float]:
        tensor = torch.tensor([float(v) for v in values], dtype=torch.float64)
        return hvd.allreduce(tensor, op=op, name=name).tolist()

    def distributed_optimizer(self, optimizer: torch.optim.Optimizer, model: torch.nn.Module | None, *,
                              compression: str, op: str, backward_passes_per_step: int,
                              gradient_predivide_factor: float) -> torch.optim.Optimizer:
        """``optimizer`` wrapped by Horovod: gradients are allreduced as backward produces them.

        Horovod is given the names of this optimizer's parameters only (several optimizers may share
        a model).
        """
        own = {id(p) for p in parameters_of(optimizer)}
        named = [(n, p) for n, p in model.named_parameters() if id(p) in own] if model is not None else None
        return hvd.DistributedOptimizer(optimizer, named_parameters=named, compression=_COMPRESSION[compression],
                                        backward_passes_per_step=backward_passes_per_step, op=_OPS[op],
                                        gradient_predivide_factor=gradient_predivide_factor)

    def broadcast_state(self, model: torch.nn.Module, optimizer: Any, root: int = 0) -> None:
        """Make every rank's parameters, buffers and optimizer state (each optimizer's) equal to ``root``'s."""
        with self.watch("the initial broadcast of the model and optimizer"):
            hvd.broadcast_parameters(model.state_dict(), root_rank=root)
            for each in by_name(optimizer).values():
                hvd.broadcast_optimizer_state(each, root_rank=root)

    def start_max(self, tensor: torch.Tensor, name: str) -> Any:
        """Start an element-wise max over ranks of ``tensor``; ``wait`` returns the result."""
        return hvd.allreduce_async(tensor, op=hvd.Max, name=name)

    def start_sum(self, tensor: torch.Tensor, name: str) -> Any:
        """Start an element-wise sum over ranks of ``tensor``; ``wait`` returns the result."""
        return hvd.allreduce_async(tensor, op=hvd.Sum, name=name)

    def wait(self, handle: Any) -> torch.Tensor:
        with self.watch("an allreduce of hvdtrain's step flags"):
            return hvd.synchronize(handle)


class SerialBackend(CoreSerialBackend):
    """The PyTorch collectives of a one-process job, without Horovod: for tests and notebooks.

    ``Trainer(..., backend=SerialBackend())`` trains in the calling process, exactly as one Horovod
    worker would.
    """

    def distributed_optimizer(self, optimizer: torch.optim.Optimizer, model: torch.nn.Module | None, *,
                              compression: str, op: str, backward_passes_per_step: int,
                              gradient_predivide_factor: float) -> torch.optim.Optimizer:
        """``optimizer`` with Horovod's ``synchronize``/``skip_synchronize`` API, which has nothing to do here."""
        optimizer.__class__ = type(type(optimizer).__name__, (_LocalSynchronization, type(optimizer)), {})
        optimizer.backward_passes_per_step = backward_passes_per_step
        return optimizer

    def broadcast_state(self, model: torch.nn.Module, optimizer: Any, root: int = 0) -> None:
        return None

    def start_max(self, tensor: torch.Tensor, name: str) -> torch.Tensor:
        return tensor

    def start_sum(self, tensor: torch.Tensor, name: str) -> torch.Tensor:
        return tensor

    def wait(self, handle: torch.Tensor) -> torch.Tensor:
        return handle


class _LocalSynchronization:
    """The gradient-synchronization API of a Horovod optimizer, for a single process."""

    backward_passes_per_step: int

    def synchronize(self) -> None:
        return None

    @contextlib.contextmanager
    def skip_synchronize(self) -> Iterator[None]:
        yield


def default_backend() -> TorchBackend:
    """The backend of a Horovod job, for the adapters' ``backend=None`` (call ``init()`` first)."""
    return HorovodBackend()


def init(threads_per_worker: int | None = None) -> HorovodBackend:
    """Initialize Horovod, pin this worker's GPU, size torch's thread pool, configure logging.

    With CUDA, worker ``local_rank`` uses GPU ``local_rank`` (``torch.cuda.set_device``).

    Args:
        threads_per_worker: intra-op threads per process. Defaults to
            ``OMP_NUM_THREADS`` if set, else the CPU cores divided among the
            local workers, so workers do not fight over cores.

    Returns:
        The job's backend.

    Raises:
        RuntimeError: a node has fewer GPUs than workers.
    """
    hvd.init()
    backend = HorovodBackend()
    pin_gpu(backend.local_rank, backend.local_size)
    torch.set_num_threads(threads_per_worker or default_threads(backend.local_size))
    configure_logging(backend.rank)
    return backend


def pin_gpu(local_rank: int, local_size: int) -> None:
    """Make GPU ``local_rank`` this process's current CUDA device; nothing without CUDA."""
    if not torch.cuda.is_available():
        return
    gpus = torch.cuda.device_count()
    if local_size > gpus:
        raise RuntimeError(f"this node has {gpus} GPU{'s' * (gpus != 1)} but {local_size} workers: one worker "
                           f"per GPU, so launch with -np {gpus} per node (or -H host:{gpus})")
    torch.cuda.set_device(local_rank)


def default_device(local_rank: int) -> torch.device:
    """``cuda:<local_rank>`` when CUDA is available, else the CPU."""
    return torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
