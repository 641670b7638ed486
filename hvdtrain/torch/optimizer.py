"""Wrap a torch optimizer so each step's gradients are averaged across workers by the backend."""
from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import torch

from hvdtrain.core.options import COMPRESSIONS, REDUCE_OPS


def DistributedOptimizer(optimizer: torch.optim.Optimizer, model: torch.nn.Module | None = None, *,
                         backend: Any = None, compression: str = "none", backward_passes_per_step: int = 1,
                         op: str = "average", scale_lr: bool = True,
                         gradient_predivide_factor: float = 1.0) -> torch.optim.Optimizer:
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
        scale_lr: multiply each LR by the world size for "average"/"sum" (the
            linear scaling rule; pair it with ``LearningRateWarmup``).
        gradient_predivide_factor: divide before and after the sum (fp16 range).

    Raises:
        ValueError: an unknown compression or op, or an optimizer that is already distributed.
    """
    if compression not in COMPRESSIONS:
        raise ValueError(f"compression must be one of {sorted(COMPRESSIONS)} (got {compression!r})")
    if op not in REDUCE_OPS:
        raise ValueError(f"op must be one of {sorted(REDUCE_OPS)} (got {op!r})")
    if backward_passes_per_step < 1:
        raise ValueError(f"backward_passes_per_step must be >= 1 (got {backward_passes_per_step})")
    if is_distributed(optimizer):
        raise ValueError("this optimizer is already distributed; wrap the plain optimizer once")
    if backend is None:
        from hvdtrain.torch.backend import HorovodBackend

        backend = HorovodBackend()
    if scale_lr and op != "adasum":
        for group in optimizer.param_groups:
            group["lr"] *= backend.size
    return backend.distributed_optimizer(optimizer, model, compression=compression, op=op,
                                         backward_passes_per_step=backward_passes_per_step,
                                         gradient_predivide_factor=gradient_predivide_factor)


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
    return torch.nn.utils.clip_grad_norm_(list(parameters), max_norm)


@contextlib.contextmanager
def skip_synchronize(optimizer: torch.optim.Optimizer) -> Iterator[None]:
    """Step without waiting for an allreduce that ``synchronize`` already finished."""
    with optimizer.skip_synchronize():
        yield


class NamedOptimizers(Mapping[str, torch.optim.Optimizer]):
    """Several distributed optimizers by name, which callbacks, checkpoints and LR schedules see as one.

    ``param_groups`` lists every optimizer's groups, in the order given (so LR scaling and warmup reach
    them all, and ``lr`` logs the first one's); ``state_dict`` holds each optimizer's under its name.
    ``optimizers["generator"]`` is one of them.

    Args:
        optimizers: name -> optimizer; no parameter may be in two of them.
        model: names the parameters in errors.

    Raises:
        ValueError: no optimizers, or a parameter in two of them.
    """

    def __init__(self, optimizers: Mapping[str, torch.optim.Optimizer], model: torch.nn.Module | None = None) -> None:
        if not optimizers:
            raise ValueError("no optimizers: give at least one, as {name: optimizer}")
        _check_disjoint(optimizers, model)
        self._optimizers = dict(optimizers)

    def __getitem__(self, name: str) -> torch.optim.Optimizer:
        return self._optimizers[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._optimizers)

    def __len__(self) -> int:
        return len(self._optimizers)

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return [group for optimizer in self.values() for group in optimizer.param_groups]

    def state_dict(self) -> dict[str, Any]:
        return {name: optimizer.state_dict() for name, optimizer in self.items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Load each optimizer's state from ``state_dict()``'s entry of its name.

        Raises:
            ValueError: ``state`` is not for these names (e.g. one optimizer's state).
        """
        if set(state) != set(self):
            what = "one optimizer's state" if "param_groups" in state else f"optimizers {sorted(state)}"
            raise ValueError(f"the saved optimizer state is {what}, but this Trainer has optimizers {list(self)}")
        for name, optimizer in self.items():
            optimizer.load_state_dict(state[name])

    def zero_grad(self) -> None:
        for optimizer in self.values():
            optimizer.zero_grad()


def by_name(optimizer: Any) -> dict[str, torch.optim.Optimizer]:
    """A ``NamedOptimizers``' optimizers by name; a single optimizer is named "optimizer"; None is none."""
    if isinstance(optimizer, NamedOptimizers):
        return dict(optimizer)
    return {} if optimizer is None else {"optimizer": optimizer}


def parameters_of(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    """The parameters ``optimizer`` updates, in its groups' order."""
    return [p for group in optimizer.param_groups for p in group["params"]]


def _check_disjoint(optimizers: Mapping[str, torch.optim.Optimizer], model: torch.nn.Module | None) -> None:
    names = {id(p): name for name, p in model.named_parameters()} if model is not None else {}
    owner: dict[int, str] = {}
    for name, optimizer in optimizers.items():
        for p in parameters_of(optimizer):
            if owner.get(id(p), name) != name:
                raise ValueError(f"parameter {names.get(id(p), tuple(p.shape))!r} is in optimizers "
                                 f"{owner[id(p)]!r} and {name!r}: give each parameter to one optimizer")
            owner[id(p)] = name
