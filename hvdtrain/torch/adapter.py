"""The PyTorch framework adapter: broadcast, state I/O, learning rates and RNG."""
from __future__ import annotations

import io
import random
from importlib.metadata import version
from typing import Any

import numpy as np
import torch


class TorchAdapter:
    """Implements ``hvdtrain.core.adapter.FrameworkAdapter`` for PyTorch.

    Args:
        backend: a PyTorch backend (``hvdtrain.torch.HorovodBackend`` or ``SerialBackend``).
        extra_state: more objects with ``state_dict``/``load_state_dict`` (e.g. the loss scaler) that
            checkpoints save and the initial broadcast spreads, by name.
    """

    name = "torch"

    def __init__(self, backend: Any, extra_state: dict[str, Any] | None = None) -> None:
        self.backend = backend
        self.extra_state = dict(extra_state or {})

    def broadcast_state(self, model: torch.nn.Module, optimizer: Any, root: int = 0) -> None:
        self.backend.broadcast_state(model, optimizer, root)
        if self.extra_state:
            states = self.backend.broadcast_object({k: v.state_dict() for k, v in self.extra_state.items()}, root)
            self._load_extra(states)

    def _load_extra(self, states: dict[str, Any]) -> None:
        for name, obj in self.extra_state.items():
            if name in states:
                obj.load_state_dict(states[name])

    def state_dict(self, model: torch.nn.Module, optimizer: Any) -> dict[str, Any]:
        return {"model": model.state_dict(), "optimizer": optimizer.state_dict() if optimizer else None,
                "extra": {name: obj.state_dict() for name, obj in self.extra_state.items()}}

    def load_state_dict(self, model: torch.nn.Module, optimizer: Any, state: dict[str, Any]) -> None:
        """Restore what ``state_dict`` returned; tensors go to the model's own device (CPU or GPU)."""
        model.load_state_dict(state["model"])
        if optimizer is not None and state.get("optimizer") is not None:
            optimizer.load_state_dict(state["optimizer"])  # torch moves the state to each parameter's device
        self._load_extra(state.get("extra", {}))

    def get_learning_rates(self, optimizer: Any) -> list[float]:
        return [float(group["lr"]) for group in optimizer.param_groups]

    def set_learning_rates(self, optimizer: Any, rates: list[float]) -> None:
        for group, rate in zip(optimizer.param_groups, rates):
            group["lr"] = rate

    def rng_state(self) -> dict[str, Any]:
        state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def set_rng_state(self, state: dict[str, Any]) -> None:
        torch.set_rng_state(state["torch"])
        np.random.set_state(state["numpy"])
        random.setstate(state["python"])
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])

    def serialize(self, obj: Any) -> bytes:
        buffer = io.BytesIO()
        torch.save(obj, buffer)
        return buffer.getvalue()

    def deserialize(self, data: bytes) -> Any:
        # Checkpoints hold optimizer and RNG state, not only tensors: only load files you trust.
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=False)

    def versions(self) -> dict[str, str]:
        return {"torch": torch.__version__, "horovod": version("horovod")}


def broadcast_state(model: torch.nn.Module, optimizer: Any = None, backend: Any = None, root: int = 0) -> None:
    """Make every rank's model (and optimizer) state equal to ``root``'s. Call before the first step.

    For hand-written loops; ``Trainer`` does this for you.
    """
    if backend is None:
        from hvdtrain.torch.backend import HorovodBackend

        backend = HorovodBackend()
    backend.broadcast_state(model, optimizer, root)
