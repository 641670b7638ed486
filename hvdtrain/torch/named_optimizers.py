"""Several optimizers by name, and which parameters each one updates: what the backend, the updates and
the Trainer all ask about optimizers."""
from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import torch


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


def hyperparameters(groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each parameter group's settings (lr, betas, ...) without its parameters."""
    return [{key: value for key, value in group.items() if key != "params"} for group in groups]


def _check_disjoint(optimizers: Mapping[str, torch.optim.Optimizer], model: torch.nn.Module | None) -> None:
    names = {id(p): name for name, p in model.named_parameters()} if model is not None else {}
    owner: dict[int, str] = {}
    for name, optimizer in optimizers.items():
        for p in parameters_of(optimizer):
            if owner.get(id(p), name) != name:
                raise ValueError(f"parameter {names.get(id(p), tuple(p.shape))!r} is in optimizers "
                                 f"{owner[id(p)]!r} and {name!r}: give each parameter to one optimizer")
            owner[id(p)] = name
