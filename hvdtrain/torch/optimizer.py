"""Wrap a torch optimizer so each step's gradients are averaged across workers by the backend."""
from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from typing import Any

import torch

from hvdtrain.core.options import COMPRESSIONS, REDUCE_OPS
from hvdtrain.torch.backend import TorchBackend, default_backend
from hvdtrain.torch.sharded_optimizer import ShardedState
from hvdtrain.torch.sharded_optimizer import shard_optimizer_state as sharded


def DistributedOptimizer(optimizer: torch.optim.Optimizer, model: torch.nn.Module | None = None, *,
                         backend: TorchBackend | None = None, compression: str = "none",
                         backward_passes_per_step: int = 1, op: str = "average", scale_lr: bool = True,
                         gradient_predivide_factor: float = 1.0,
                         shard_optimizer_state: int = 0) -> torch.optim.Optimizer:
    """Return ``optimizer`` wrapped for data parallelism (same class, ``state_dict`` and param groups).

    On Horovod, gradients are allreduced in the background as ``backward``
    produces them, overlapping communication with the rest of the backward
    pass; ``step`` waits for them. To clip gradients, see ``clip_grad_norm``.

    Args:
        optimizer: any ``torch.optim`` optimizer.
        model: gives parameter names to Horovod (clearer errors, timeline).
        backend: the job's backend (default: Horovod's; call ``hvdtrain.torch.init()`` first).
        compression: "none" or "fp16" (halves the bytes sent; slower on CPU).
        backward_passes_per_step: local gradient accumulation before each allreduce.
        op: "average", "sum" or "adasum".
        scale_lr: multiply each LR by the model replicas (the world size, without a pipeline) for
            "average"/"sum" (the linear scaling rule; pair it with ``LearningRateWarmup``).
        gradient_predivide_factor: divide before and after the sum (fp16 range).
        shard_optimizer_state: 1 or 2 (ZeRO's stages) cut the optimizer state, and for 2 the gradients
            between accumulation passes, across the data-parallel replicas instead of replicating them
            (see ``hvdtrain.torch.sharded_optimizer``); 0 replicates them.

    Raises:
        ValueError: an unknown compression or op, or an optimizer that is already distributed; sharding
            with another op than "average", with compression or across pipeline stages.
    """
    if compression not in COMPRESSIONS:
        raise ValueError(f"compression must be one of {sorted(COMPRESSIONS)} (got {compression!r})")
    if op not in REDUCE_OPS:
        raise ValueError(f"op must be one of {sorted(REDUCE_OPS)} (got {op!r})")
    if backward_passes_per_step < 1:
        raise ValueError(f"backward_passes_per_step must be >= 1 (got {backward_passes_per_step})")
    if is_distributed(optimizer):
        raise ValueError("this optimizer is already distributed; wrap the plain optimizer once")
    backend = backend or default_backend()
    if shard_optimizer_state:
        _check_sharding(backend, compression, op, gradient_predivide_factor)
    if scale_lr and op != "adasum":
        for group in optimizer.param_groups:
            group["lr"] *= backend.layout.data_size
    if shard_optimizer_state:
        return sharded(optimizer, backend, shard_optimizer_state, backward_passes_per_step)
    return backend.distributed_optimizer(optimizer, model, compression=compression, op=op,
                                         backward_passes_per_step=backward_passes_per_step,
                                         gradient_predivide_factor=gradient_predivide_factor)


def _check_sharding(backend: TorchBackend, compression: str, op: str, predivide: float) -> None:
    if op != "average":
        raise ValueError(f"shard_optimizer_state averages the gradients with a reducescatter: op={op!r} cannot be "
                         "sharded; use op='average' or shard_optimizer_state=0")
    if compression != "none":
        raise ValueError(f"shard_optimizer_state sends gradients uncompressed: compression={compression!r} cannot be "
                         "sharded; use compression='none' or shard_optimizer_state=0")
    if predivide != 1.0:
        raise ValueError(f"shard_optimizer_state averages in one reducescatter: gradient_predivide_factor={predivide} "
                         "cannot be sharded; leave it at 1.0 or use shard_optimizer_state=0")
    if backend.elastic:
        raise ValueError("shard_optimizer_state cannot run under --elastic yet (an elastic commit keeps each "
                         "worker's whole state): launch without --elastic, or use shard_optimizer_state=0")
    if backend.layout.parts > 1:
        raise ValueError("shard_optimizer_state does not yet run with model parallelism (pipeline stages or "
                         "tensor slices): use shard_optimizer_state=0 with hvdtrain.torch.init(pipeline=, tensor=)")


def is_distributed(optimizer: Any) -> bool:
    """True if ``optimizer`` already has the ``synchronize``/``skip_synchronize`` API of a distributed one."""
    return callable(getattr(optimizer, "synchronize", None)) and callable(getattr(optimizer, "skip_synchronize", None))


def clip_grad_norm(optimizer: torch.optim.Optimizer, parameters: Iterable[torch.Tensor],
                   max_norm: float) -> torch.Tensor:
    """Clip the *averaged* gradients, then let ``optimizer.step()`` skip the allreduce it already did.

    Use as ``clip_grad_norm(opt, model.parameters(), 1.0); with skip_synchronize(opt): opt.step()``;
    the Trainer does this for you with ``grad_clip_norm=``.
    """
    optimizer.synchronize()
    if isinstance(optimizer, ShardedState):  # the averaged gradients are in its slices, not the parameters
        return optimizer.clip_grad_norm_(max_norm)
    return torch.nn.utils.clip_grad_norm_(list(parameters), max_norm)


@contextlib.contextmanager
def skip_synchronize(optimizer: torch.optim.Optimizer) -> Iterator[None]:
    """Step without waiting for an allreduce that ``synchronize`` already finished."""
    with optimizer.skip_synchronize():
        yield
