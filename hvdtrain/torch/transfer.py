"""How a pipeline stage's tensors travel between ranks: a header (dtype, shape) and the raw bytes.

Where the bytes live depends on the stage's device:
- "host": a CPU tensor's own memory goes to MPI as it is;
- "direct": a CUDA tensor's memory goes to MPI as it is, when MPI is CUDA-aware (``mpi_cuda_aware``);
- "pinned": otherwise a CUDA tensor is copied through page-locked host memory, which the GPU copies
  to and from by DMA (an ordinary host buffer would make each copy a synchronous staged one).
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from hvdtrain.engine.peers import PeerChannel

HOST, DIRECT, PINNED = "host", "direct", "pinned"
DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int64, torch.int32, torch.int16,
          torch.int8, torch.uint8, torch.bool)
MAX_DIMS = 5


def transfer_mode(device: torch.device, cuda_aware: bool) -> str:
    """HOST for a CPU stage; for a CUDA stage DIRECT when MPI takes CUDA memory, else PINNED."""
    if device.type == "cpu":
        return HOST
    if device.type == "cuda":
        return DIRECT if cuda_aware else PINNED
    raise ValueError(f"a pipeline stage on {device.type} cannot send its tensors: MPI takes CPU memory, and CUDA "
                     "memory when it is CUDA-aware; run the stages on CPU or CUDA devices")


def header_of(tensor: torch.Tensor) -> list[int]:
    """dtype index, dims, shape: what the receiver needs to rebuild ``tensor`` from its bytes."""
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"a pipeline stage passes one tensor to the next stage (got {type(tensor).__name__}); "
                        "return a single tensor from every stage but the last")
    if tensor.dtype not in DTYPES or tensor.dim() > MAX_DIMS:
        raise TypeError(f"a stage output of dtype {tensor.dtype} with {tensor.dim()} dimensions cannot travel "
                        f"between stages (dtypes {[str(d) for d in DTYPES]}, up to {MAX_DIMS} dimensions)")
    return [DTYPES.index(tensor.dtype), tensor.dim(), *tensor.shape]


def rebuild(header: np.ndarray, raw: torch.Tensor) -> torch.Tensor:
    """The tensor of ``header`` over ``raw``'s bytes (no copy)."""
    dtype, dims = DTYPES[int(header[0])], int(header[1])
    return raw.view(dtype).reshape([int(d) for d in header[2:2 + dims]])


class TensorTransfer:
    """Sends and receives one stage's tensors over ``peers``, in this stage's ``transfer_mode``.

    Args:
        peers: the point-to-point channel.
        device: the stage's device; received tensors arrive there.
    """

    def __init__(self, peers: PeerChannel, device: torch.device) -> None:
        self.peers, self.device = peers, device
        self.mode = transfer_mode(device, peers.cuda_aware if device.type == "cuda" else False)

    def send(self, tensor: torch.Tensor, header: list[int], dest: int, tag: int) -> None:
        """Start sending ``tensor`` after ``header`` (the caller's entries, then ``header_of(tensor)``)."""
        header = [*header, *header_of(tensor)]
        flat = tensor.detach().contiguous().reshape(-1).view(torch.uint8)
        if self.mode == HOST:
            self.peers.send(header, flat.numpy(), dest, tag, keep=flat)
            return
        if self.mode == PINNED:
            staged = torch.empty(flat.shape, dtype=torch.uint8, pin_memory=True)
            staged.copy_(flat, non_blocking=True)
            flat = staged
        torch.cuda.current_stream(self.device).synchronize()  # MPI reads the bytes outside torch's stream
        self.peers.send(header, flat.numpy() if self.mode == PINNED else flat, dest, tag, keep=flat)

    def receive(self, source: int, tag: int, what: str, extra: int) -> tuple[list[int], torch.Tensor]:
        """(the sender's first ``extra`` header entries, the tensor on this stage's device)."""
        header, raw = self.peers.receive(source, tag, what, self._allocate)
        tensor = rebuild(header[extra:], raw)
        if self.mode == PINNED:
            tensor = tensor.to(self.device, non_blocking=True)  # torch keeps the pinned block until it is done
        return [int(entry) for entry in header[:extra]], tensor

    def _allocate(self, nbytes: int) -> tuple[Any, torch.Tensor]:
        if self.mode == DIRECT:
            raw = torch.empty(nbytes, dtype=torch.uint8, device=self.device)
            # The caching allocator may hand back a block that kernels still queued on the stream read; MPI
            # writes outside the stream's order, so they must finish first.
            torch.cuda.current_stream(self.device).synchronize()
            return raw, raw
        raw = torch.empty(nbytes, dtype=torch.uint8, pin_memory=self.mode == PINNED)
        return raw.numpy(), raw
