"""The PyTorch backends: every collective the PyTorch adapter runs, on Horovod or in one process.

Gradients, the non-finite flag, broadcasts and metrics all go through the backend a Trainer was
given; this module (and no other PyTorch module) imports Horovod.
"""
from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any, Protocol

import horovod.torch as hvd
import torch
from horovod.common.elastic import State as HorovodState

from hvdtrain.core.agreement import check_ranks_agree
from hvdtrain.core.backend import Backend
from hvdtrain.core.backend import SerialBackend as CoreSerialBackend
from hvdtrain.core.logs import configure_logging
from hvdtrain.engine.horovod_backend import HorovodBackendBase, default_threads, initialize
from hvdtrain.engine.peers import PeerChannel
from hvdtrain.torch.named_optimizers import by_name, hyperparameters, parameters_of
from hvdtrain.torch.sharded_optimizer import ShardedState

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

    def start_reducescatter(self, tensor: torch.Tensor, name: str) -> Any:
        """Start averaging a flat ``tensor`` over this rank's data-parallel group, keeping this replica's slice
        (replica r of N gets ``n // N + (r < n % N)`` elements); ``wait(handle)`` returns it."""

    def start_allgather(self, tensor: torch.Tensor, name: str) -> Any:
        """Start concatenating every replica's ``tensor`` (dim 0, in replica order); ``wait`` returns it."""

    def broadcast_tensor(self, tensor: torch.Tensor, root: int, name: str) -> torch.Tensor:
        """``root``'s ``tensor`` on every replica of this rank's data-parallel group (in place)."""

    def wait(self, handle: Any) -> torch.Tensor:
        """The result of a ``start_max``/``start_sum``/``start_reducescatter``/``start_allgather``."""

    @property
    def peers(self) -> PeerChannel:
        """Point-to-point messages between ranks (a pipeline's activations and gradients)."""


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
        """``optimizer`` wrapped by Horovod: gradients are allreduced over this rank's data-parallel group
        as backward produces them (a pipeline stage's replicas; the whole world without a pipeline).

        Horovod is given the names of this optimizer's parameters only (several optimizers may share
        a model).
        """
        process_set = self.data_process_set
        if process_set is None:  # the stage's only replica
            return local_optimizer(optimizer, backward_passes_per_step)
        own = {id(p) for p in parameters_of(optimizer)}
        named = [(n, p) for n, p in model.named_parameters() if id(p) in own] if model is not None else None
        return hvd.DistributedOptimizer(optimizer, named_parameters=named, compression=_COMPRESSION[compression],
                                        backward_passes_per_step=backward_passes_per_step, op=_OPS[op],
                                        gradient_predivide_factor=gradient_predivide_factor, process_set=process_set)

    def broadcast_state(self, model: torch.nn.Module, optimizer: Any, root: int = 0) -> None:
        """Make every rank's parameters, buffers and optimizer state (each optimizer's) equal to ``root``'s;
        in a pipeline or with tensor slices, each part's replicas take their first replica's (replicated
        parameters of a tensor group start equal when every rank builds the model alike, as it must)."""
        if self.layout.parts > 1:
            self._broadcast_within_stage(model, optimizer)
            return
        with self.watch("the initial broadcast of the model and optimizer"):
            for each in by_name(optimizer).values():
                if isinstance(each, ShardedState):
                    each.broadcast_state(root)
                else:
                    self._broadcast_optimizer(each, root)
            # After the optimizers: a rank whose optimizer had no state yet took a step to create it.
            hvd.broadcast_parameters(model.state_dict(), root_rank=root)

    def _broadcast_optimizer(self, optimizer: torch.optim.Optimizer, root: int) -> None:
        """``root``'s optimizer state; for an optimizer that has none yet on ``root``, its hyperparameters only.

        Horovod's ``broadcast_optimizer_state`` creates missing state with a zero-gradient step, which
        counts as Adam's first step (its bias correction) and decays AdamW's weights: a fresh optimizer
        must start as it would in one process.
        """
        agreed = self.broadcast_object({"fresh": not optimizer.state,
                                        "groups": hyperparameters(optimizer.param_groups)}, root)
        if not agreed["fresh"]:
            hvd.broadcast_optimizer_state(optimizer, root_rank=root)
            return
        for group, values in zip(optimizer.param_groups, agreed["groups"]):
            group.update(values)

    def _broadcast_within_stage(self, model: torch.nn.Module, optimizer: Any) -> None:
        """Every tensor of this rank's model part (its stage, or its tensor slice) and of its optimizer state from
        the part's first replica, named by part."""
        layout, process_set = self.layout, self.data_process_set
        tensors = {f"model.{name}": tensor for name, tensor in model.state_dict().items()}
        for opt_name, each in by_name(optimizer).items():
            for index, state in each.state_dict()["state"].items():
                tensors.update({f"optimizer.{opt_name}.{index}.{key}": value for key, value in state.items()
                                if torch.is_tensor(value)})
        # Named by each rank's own tensors: the replicas must hold the same ones, or the broadcast would stall.
        check_ranks_agree(self, [(name, tuple(t.shape), str(t.dtype)) for name, t in sorted(tensors.items())],
                          "model and optimizer state")
        if process_set is None:  # the stage's only replica
            return
        root = self.data_rank_in_horovod(0)
        with self.watch("the initial broadcast of the stage's model and optimizer"):
            handles = [hvd.broadcast_async_(tensor, root_rank=root, name=f"hvdtrain.part{layout.part}.{name}",
                                            process_set=process_set) for name, tensor in sorted(tensors.items())]
            for handle in handles:
                hvd.synchronize(handle)

    def start_max(self, tensor: torch.Tensor, name: str) -> Any:
        """Start an element-wise max over ranks of ``tensor``; ``wait`` returns the result."""
        return self._start_world_reduce(tensor, "max", hvd.Max, name)

    def start_sum(self, tensor: torch.Tensor, name: str) -> Any:
        """Start an element-wise sum over ranks of ``tensor``; ``wait`` returns the result (a world of one sends
        nothing: a Horovod op waits for the background thread's next cycle, a millisecond)."""
        return self._start_world_reduce(tensor, "sum", hvd.Sum, name)

    def _start_world_reduce(self, tensor: torch.Tensor, op: str, horovod_op: Any, name: str) -> Any:
        if self.size == 1:
            return tensor
        world = self.mpi_world
        if world is None:
            return hvd.allreduce_async(tensor, op=horovod_op, name=name)
        with self.watch(f"the collective {name}"):  # a pipeline's world: MPI's, at once (the result is the handle)
            total = world.reduce(tensor.detach().double().cpu().numpy().reshape(-1), op)
        return torch.from_numpy(total).reshape(tensor.shape).to(tensor.device, tensor.dtype)

    def start_reducescatter(self, tensor: torch.Tensor, name: str) -> Any:
        return self._in_data_group(hvd.reducescatter_async, tensor, name=name, op=hvd.Average)

    def start_allgather(self, tensor: torch.Tensor, name: str) -> Any:
        return self._in_data_group(hvd.allgather_async, tensor, name=name)

    def broadcast_tensor(self, tensor: torch.Tensor, root: int, name: str) -> torch.Tensor:
        with self.watch(f"the broadcast {name}"):
            return self._in_data_group(hvd.broadcast_, tensor, root_rank=root, name=name)

    def _in_data_group(self, collective: Any, tensor: torch.Tensor, **options: Any) -> Any:
        """``collective`` over this rank's data-parallel group; a group of one sends nothing."""
        process_set = self.data_process_set
        return tensor if process_set is None else collective(tensor, process_set=process_set, **options)

    def wait(self, handle: Any) -> torch.Tensor:
        if torch.is_tensor(handle):  # a group of one: nothing was sent
            return handle
        with self.watch("a collective of hvdtrain's step (flags, or sharded gradients and weights)"):
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
        return local_optimizer(optimizer, backward_passes_per_step)

    @property
    def peers(self) -> PeerChannel:
        raise RuntimeError("a single process has no peers: a pipeline needs hvdtrain.torch.init(pipeline=P) "
                           "and a launch of P or more workers")

    def broadcast_state(self, model: torch.nn.Module, optimizer: Any, root: int = 0) -> None:
        for each in by_name(optimizer).values():
            if isinstance(each, ShardedState):
                each.broadcast_state(root)  # takes up the state it loaded

    def start_max(self, tensor: torch.Tensor, name: str) -> torch.Tensor:
        return tensor

    def start_sum(self, tensor: torch.Tensor, name: str) -> torch.Tensor:
        return tensor

    def start_reducescatter(self, tensor: torch.Tensor, name: str) -> torch.Tensor:
        return tensor

    def start_allgather(self, tensor: torch.Tensor, name: str) -> torch.Tensor:
        return tensor

    def broadcast_tensor(self, tensor: torch.Tensor, root: int, name: str) -> torch.Tensor:
        return tensor

    def wait(self, handle: torch.Tensor) -> torch.Tensor:
        return handle


def local_optimizer(optimizer: torch.optim.Optimizer, backward_passes_per_step: int) -> torch.optim.Optimizer:
    """``optimizer`` with a distributed optimizer's API for gradients no other rank shares."""
    optimizer.__class__ = type(type(optimizer).__name__, (_LocalSynchronization, type(optimizer)), {})
    optimizer.backward_passes_per_step = backward_passes_per_step
    return optimizer


class _LocalSynchronization:
    """The gradient-synchronization API of a Horovod optimizer, for a single process."""

    backward_passes_per_step: int

    def synchronize(self) -> None:
        return None

    def skip_synchronize(self) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()


def default_backend() -> TorchBackend:
    """The backend of a Horovod job, for the adapters' ``backend=None`` (call ``init()`` first)."""
    return HorovodBackend()


def init(threads_per_worker: int | None = None, pipeline: int = 1, tensor: int = 1) -> HorovodBackend:
    """Initialize Horovod, pin this worker's GPU, size torch's thread pool, configure logging.

    With CUDA, worker ``local_rank`` uses GPU ``local_rank`` (``torch.cuda.set_device``).

    Args:
        threads_per_worker: intra-op threads per process. Defaults to
            ``OMP_NUM_THREADS`` if set, else the CPU cores divided among the
            local workers, so workers do not fight over cores.
        pipeline: split each model replica into this many pipeline stages (``Trainer`` then trains
            stages); the workers are stages x replicas. Needs an MPI launch.
        tensor: split the layers of ``hvdtrain.torch.tensor_parallel`` across this many neighbouring workers
            (build them with ``TensorGroup.of(backend)``); the workers are tensor slices x
            replicas, and gradients are averaged over the replicas holding the same slice.

    Returns:
        The job's backend (``backend.layout`` says this rank's stage and replica).

    Raises:
        RuntimeError: a node has fewer GPUs than workers; a pipeline without MPI.
        LayoutError: a world that is not a multiple of ``pipeline`` (or of ``tensor``).
    """
    initialize(hvd, pipeline, _mpi, tensor)
    backend = HorovodBackend()
    pin_gpu(backend.local_rank, backend.local_size)
    torch.set_num_threads(threads_per_worker or default_threads(backend.local_size))
    configure_logging(backend.rank)
    return backend


def _mpi() -> Any:
    """mpi4py's MPI module (its import starts MPI, with full thread support), for a pipeline's messages."""
    try:
        from mpi4py import MPI
    except ImportError as error:
        raise RuntimeError("a pipeline sends activations with mpi4py, which is not installed: pip install mpi4py "
                           "(built against the MPI that Horovod uses)") from error
    return MPI


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
