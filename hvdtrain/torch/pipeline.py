"""Model parallelism: a model split into stages on consecutive ranks, trained as a pipeline.

Data parallelism (the rest of hvdtrain) copies the whole model to every
worker. When a model does not fit on one worker, split it instead: each rank
holds one stage (a slice of the layers), activations flow forward from rank to
rank and gradients flow back. The batch is cut into micro-batches so the
stages work at the same time (GPipe's fill-and-drain schedule): with S stages
and M micro-batches, each stage idles for only (S - 1) of M + S - 1 slots.

Point-to-point messages use mpi4py, so launch with ``mpirun`` (or
``horovodrun --mpi``). The gradients equal those of the unsplit model on the
whole batch, because every micro-batch loss is weighted by its share.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

_FORWARD, _BACKWARD = 11, 12


def _mpi_world() -> Any:
    from mpi4py import MPI

    return MPI.COMM_WORLD


class PipelineStage:
    """This rank's stage of a pipeline-parallel model.

    Args:
        module: the layers this rank holds; its input is the previous stage's output.
        loss_fn: ``loss_fn(outputs, targets)`` (batch mean); used by the last stage only.
        micro_batches: micro-batches per step (more hides more idle time, costs more messages).
        comm: an MPI communicator whose ranks are the stages in order (default: COMM_WORLD).

    Raises:
        ValueError: a single-process world, or a bad micro-batch count.
    """

    def __init__(self, module: torch.nn.Module, loss_fn: Callable[[Any, Any], torch.Tensor] | None = None,
                 micro_batches: int = 4, comm: Any = None) -> None:
        self.comm = comm or _mpi_world()
        self.stage, self.stages = self.comm.Get_rank(), self.comm.Get_size()
        if self.stages < 2:
            raise ValueError("a pipeline needs at least 2 ranks, one per stage; launch with mpirun -np 2 or more")
        if micro_batches < 1:
            raise ValueError(f"micro_batches must be >= 1 (got {micro_batches})")
        if self.is_last and loss_fn is None:
            raise ValueError("the last stage computes the loss: pass loss_fn=")
        self.module, self.loss_fn, self.micro_batches = module, loss_fn, micro_batches

    @property
    def is_first(self) -> bool:
        return self.stage == 0

    @property
    def is_last(self) -> bool:
        return self.stage == self.stages - 1

    def train_step(self, inputs: torch.Tensor | None, targets: torch.Tensor | None,
                   optimizer: torch.optim.Optimizer) -> float | None:
        """Forward and backward all micro-batches, then step this stage's optimizer.

        Args:
            inputs: the batch inputs (first stage only; ignored elsewhere).
            targets: the batch targets (last stage only; ignored elsewhere).
            optimizer: optimizer over ``module``'s parameters.

        Returns:
            The batch-mean loss on the last stage, None elsewhere.
        """
        optimizer.zero_grad()
        saved = [self._forward(m, inputs, targets) for m in range(self.micro_batches)]
        for stage_input, output in reversed(saved):
            self._backward(stage_input, output)
        optimizer.step()
        if self.is_last:
            return float(sum(loss.item() for _, loss in saved))
        return None

    @torch.no_grad()
    def predict(self, inputs: torch.Tensor | None) -> torch.Tensor | None:
        """Forward only; returns the model's outputs on the last stage, None elsewhere."""
        x = inputs if self.is_first else self._receive(_FORWARD)
        out = self.module(x)
        if self.is_last:
            return out
        self._send(out, self.stage + 1, _FORWARD)
        return None

    def _forward(self, micro: int, inputs: torch.Tensor | None,
                 targets: torch.Tensor | None) -> tuple[torch.Tensor | None, torch.Tensor]:
        if self.is_first:
            stage_input = None
            x = torch.tensor_split(inputs, self.micro_batches)[micro]
        else:
            stage_input = self._receive(_FORWARD).requires_grad_(True)
            x = stage_input
        out = self.module(x)
        if not self.is_last:
            self._send(out.detach(), self.stage + 1, _FORWARD)
            return stage_input, out
        y = torch.tensor_split(targets, self.micro_batches)[micro]
        # Weight each micro-batch by its share so the sum equals the whole batch's mean loss.
        return stage_input, self.loss_fn(out, y) * (len(y) / len(targets))

    def _backward(self, stage_input: torch.Tensor | None, output: torch.Tensor) -> None:
        if self.is_last:
            output.backward()
        else:
            output.backward(self._receive(_BACKWARD))
        if not self.is_first:
            self._send(stage_input.grad, self.stage - 1, _BACKWARD)

    def _send(self, tensor: torch.Tensor, dest: int, tag: int) -> None:
        self.comm.send(tensor.numpy(), dest=dest, tag=tag)

    def _receive(self, tag: int) -> torch.Tensor:
        source = self.stage - 1 if tag == _FORWARD else self.stage + 1
        return torch.from_numpy(self.comm.recv(source=source, tag=tag))
