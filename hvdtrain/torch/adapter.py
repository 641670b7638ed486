"""The PyTorch framework adapter: broadcast, state I/O, learning rates and RNG."""
from __future__ import annotations

import io
import pickle
import random
from importlib.metadata import version
from typing import Any

import numpy as np
import torch

from hvdtrain.core.agreement import check_ranks_agree
from hvdtrain.core.checkpoint_io import CheckpointError
from hvdtrain.core.state_codec import UnsafeCheckpointError, decode_state, encode_state
from hvdtrain.torch.backend import TorchBackend, default_backend
from hvdtrain.torch.sharded_optimizer import ShardedState


class TorchAdapter:
    """Implements ``hvdtrain.core.adapter.FrameworkAdapter`` for PyTorch.

    Args:
        backend: a PyTorch backend (``hvdtrain.torch.HorovodBackend`` or ``SerialBackend``).
        extra_state: more objects with ``state_dict``/``load_state_dict`` (e.g. the loss scaler) that
            checkpoints save and the initial broadcast spreads, by name.
    """

    name = "torch"

    def __init__(self, backend: TorchBackend, extra_state: dict[str, Any] | None = None) -> None:
        self.backend = backend
        self.extra_state = dict(extra_state or {})

    def broadcast_state(self, model: torch.nn.Module, optimizer: Any, root: int = 0) -> None:
        """Check that every rank has the same tensors (names, shapes, dtypes), then broadcast ``root``'s.

        Raises:
            StateMismatchError: on every rank, naming the first tensor that differs.
        """
        check_ranks_agree(self.backend, state_specs(model), "model", match_names=True)
        self.backend.broadcast_state(model, optimizer, root)
        if self.extra_state:
            states = self.backend.broadcast_object({k: v.state_dict() for k, v in self.extra_state.items()}, root)
            self._load_extra(states)

    def _load_extra(self, states: dict[str, Any]) -> None:
        for name, obj in self.extra_state.items():
            if name in states:
                obj.load_state_dict(states[name])

    def state_dict(self, model: torch.nn.Module, optimizer: Any) -> dict[str, Any]:
        """The model's, the optimizer's and the extra state. Collective with a sharded optimizer, whose
        state is gathered, a bucket at a time, on rank 0 (the other ranks get its parameter groups)."""
        if isinstance(optimizer, ShardedState):
            optimizer_state = optimizer.state_dict(keep=self.backend.rank == 0)
        else:
            optimizer_state = optimizer.state_dict() if optimizer else None
        return {"model": model.state_dict(), "optimizer": optimizer_state,
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

    def rescale_learning_rates(self, optimizer: Any, factor: float) -> None:
        self.set_learning_rates(optimizer, [rate * factor for rate in self.get_learning_rates(optimizer)])

    def rng_state(self) -> dict[str, Any]:
        state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state()  # this rank's GPU only: a resume may have fewer per node
        return state

    def set_rng_state(self, state: dict[str, Any]) -> None:
        torch.set_rng_state(state["torch"])
        np.random.set_state(state["numpy"])
        random.setstate(state["python"])
        saved = state.get("cuda") if torch.cuda.is_available() else None
        if isinstance(saved, list):  # older checkpoints hold every GPU's, by index: take this rank's, if there
            device = torch.cuda.current_device()
            saved = saved[device] if device < len(saved) else None
        if saved is not None:
            torch.cuda.set_rng_state(saved)

    def serialize(self, obj: Any) -> bytes:
        """A safe payload: JSON structure, tensors through ``torch.save``, NumPy arrays as ``.npz``."""
        return encode_state(obj, (TorchTensors(),))

    def deserialize(self, data: bytes) -> Any:
        """Decode ``serialize``'s payload; tensors are read with ``weights_only=True``, nothing is unpickled."""
        return decode_state(data, (TorchTensors(),))

    def versions(self) -> dict[str, str]:
        return {"torch": torch.__version__, "horovod": version("horovod")}


def broadcast_state(model: torch.nn.Module, optimizer: Any = None, backend: TorchBackend | None = None,
                    root: int = 0) -> None:
    """Make every rank's model (and optimizer) state equal to ``root``'s. Call before the first step.

    For hand-written loops; ``Trainer`` does this for you. Ranks whose models differ get an error
    naming the first tensor that differs instead of a hang.
    """
    if backend is None:
        backend = default_backend()
    TorchAdapter(backend).broadcast_state(model, optimizer, root)


def state_specs(model: torch.nn.Module) -> list[tuple[str, tuple[int, ...], str]]:
    """(name, shape, dtype) of every tensor in ``model.state_dict()``: what the initial broadcast sends."""
    return [(name, tuple(tensor.shape), str(tensor.dtype).removeprefix("torch."))
            for name, tensor in model.state_dict().items()]


class TorchTensors:
    """The checkpoint section of PyTorch tensors: ``torch.save`` of a list, read with ``weights_only=True``.

    Tensors keep their dtype (bfloat16 included); they load on the CPU, and ``load_state_dict``
    moves them to the model's device.
    """

    tag = "$tensor"

    def accepts(self, obj: Any) -> bool:
        return isinstance(obj, torch.Tensor)

    def dump(self, leaves: list[Any]) -> tuple[bytes, dict[str, Any]]:
        buffer = io.BytesIO()
        torch.save([tensor.detach() for tensor in leaves], buffer)
        return buffer.getvalue(), {"count": len(leaves)}

    def load(self, data: bytes, meta: dict[str, Any]) -> list[Any]:
        try:
            tensors = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as err:
            raise UnsafeCheckpointError(
                "its tensor section holds objects other than tensors, which hvdtrain never writes (torch refused "
                f"to load it with weights_only=True: {_reason(err)}); the file was crafted or "
                "damaged") from err
        except (RuntimeError, OSError, EOFError) as err:
            raise CheckpointError(f"its tensor section is damaged ({err})") from err
        if not isinstance(tensors, list) or not all(isinstance(t, torch.Tensor) for t in tensors) \
                or len(tensors) != int(meta.get("count", -1)):
            raise CheckpointError("its tensor section is not the list of tensors its index describes")
        return tensors


def _reason(error: Exception) -> str:
    """The line of torch's weights-only refusal that says what it refused (e.g. which global)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return next((line for line in lines if "unsupported" in line.lower()), lines[-1] if lines else repr(error))
