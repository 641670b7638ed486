"""Mixed precision for the PyTorch Trainer: autocast, and for float16 a GradScaler in Horovod's order."""
from __future__ import annotations

import contextlib
from typing import Any

import torch

_DTYPES = {"32": None, "bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}


class MixedPrecision:
    """Autocast for the forward pass; loss scaling for float16.

    The float16 step runs in the order a Horovod optimizer needs: scaled backward,
    ``optimizer.synchronize()`` (the allreduce of the scaled gradients), ``unscale_``, clip,
    ``scaler.step`` without a second synchronization, and once the training step's optimizers all
    stepped (one scaler for all of them), ``scaler.update``. Every rank unscales the same averaged
    gradients, so an overflowing step is skipped, and the scale lowered, on every rank alike.

    Args:
        precision: "32", "bf16-mixed" or "16-mixed".
        device: where the model runs (autocast and the scaler are per device type).
    """

    def __init__(self, precision: str, device: torch.device) -> None:
        if precision not in _DTYPES:
            raise ValueError(f"precision must be one of {list(_DTYPES)} (got {precision!r})")
        self.precision = precision
        self.device_type = device.type
        self.dtype = _DTYPES[precision]
        self.scaler = torch.amp.GradScaler(device.type) if precision == "16-mixed" else None
        self._stepped = False  # an optimizer stepped since the last scale update
        self._zero = torch.zeros((), device=device)

    def autocast(self) -> contextlib.AbstractContextManager:
        """The forward pass and the loss, in the lower precision where autocast deems it safe."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def backward(self, loss: torch.Tensor, inputs: list[torch.Tensor] | None = None) -> None:
        """Backward of the (scaled) loss, outside autocast; gradients go to ``inputs`` only if given."""
        if self.dtype is None:
            loss.backward(inputs=inputs)
            return
        scaled = self.scaler.scale(loss) if self.scaler is not None else loss
        with torch.autocast(self.device_type, enabled=False):
            scaled.backward(inputs=inputs)

    def unscale(self, optimizer: torch.optim.Optimizer) -> None:
        """Make the (already synchronized) gradients true gradients again, before clipping."""
        if self.scaler is not None:
            # A pipeline stage before the last scales no loss (its gradients arrive scaled): this creates
            # its scale, equal to the last stage's (they start alike and every stage skips together).
            self.scaler.scale(self._zero)
            self.scaler.unscale_(optimizer)

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        """Apply the gradients (skipped by the scaler if they overflowed), with no second allreduce."""
        with optimizer.skip_synchronize():
            if self.scaler is None:
                optimizer.step()
            else:
                self.scaler.step(optimizer)
                self._stepped = True
        if self.dtype is not None:
            # A step inside training_step(batch, opt) runs within autocast, which keeps low-precision
            # copies of the weights until it exits: drop them, the weights changed.
            torch.clear_autocast_cache()

    def update(self) -> None:
        """After a training step's optimizers stepped: lower or raise the loss scale, once."""
        if self._stepped:
            self.scaler.update()
            self._stepped = False

    def state_dict(self) -> dict[str, Any]:
        return {"scaler": self.scaler.state_dict() if self.scaler is not None else None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
