"""Pipeline parallelism for the PyTorch Trainer: this rank's stage of the model, and its passes.

A model too big for one worker is split into stages, each on its own rank
(``hvdtrain.torch.init(pipeline=P)``; ``Layout`` says which). Each batch is cut into micro-batches; activations flow
forward from stage to stage and their gradients flow back, in the order of the schedule
(``hvdtrain.core.pipeline_schedule``: 1F1B or GPipe). Every micro-batch's loss is weighted by its
share of the batch, so one pipeline step equals one step of the unsplit model on the whole batch.
Tensors travel as raw bytes with their dtype and shape (``TensorTransfer``): any batch shape, the last
uneven one included, and float16/bfloat16, pass unchanged; GPU stages send from and receive into GPU
memory when MPI is CUDA-aware, and through pinned host memory otherwise.
"""
from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from hvdtrain.core.layout import Layout
from hvdtrain.core.pipeline_schedule import FORWARD, stage_actions
from hvdtrain.engine.peers import PeerChannel
from hvdtrain.torch.transfer import TensorTransfer

_ACTIVATION, _GRADIENT = 1, 2



def stage_module(model: Any, stage: int, stages: int) -> torch.nn.Module:
    """This rank's stage of ``model``.

    Args:
        model: the stages as a list of ``stages`` modules; an ``nn.Sequential`` (cut into ``stages``
            runs of layers with about equal parameter counts); or a builder ``stage -> module``, so
            that no rank builds another stage's layers.
        stage: this rank's stage.
        stages: the pipeline's stage count.

    Raises:
        TypeError: another kind of model; ValueError: a list of the wrong length, or too few layers.
    """
    if isinstance(model, torch.nn.Sequential):
        return split_sequential(model, stages)[stage]
    if isinstance(model, (list, tuple, torch.nn.ModuleList)):
        if len(model) != stages:
            raise ValueError(f"the model was given as {len(model)} stages but the pipeline has {stages} "
                             f"(hvdtrain.torch.init(pipeline={stages})): give one module per stage")
        return model[stage]
    if callable(model) and not isinstance(model, torch.nn.Module):
        built = model(stage)
        if not isinstance(built, torch.nn.Module):
            raise TypeError(f"the stage builder returned {type(built).__name__} for stage {stage}, not a module")
        return built
    raise TypeError(f"with a pipeline the model is its stages: a list of modules, an nn.Sequential or a builder "
                    f"stage -> module (got {type(model).__name__})")


def split_sequential(model: torch.nn.Sequential, stages: int) -> list[torch.nn.Sequential]:
    """``model``'s layers in ``stages`` consecutive runs, cut where the parameter counts are most even."""
    layers = list(model)
    if len(layers) < stages:
        raise ValueError(f"an nn.Sequential of {len(layers)} layers cannot fill {stages} pipeline stages")
    sizes = [sum(p.numel() for p in layer.parameters()) for layer in layers]
    cumulative = np.cumsum(sizes, dtype=np.float64)
    total = cumulative[-1] or 1.0
    cuts, start = [], 0
    for stage in range(1, stages):
        # The cut nearest this stage's share, leaving at least one layer for each stage still to come.
        low, high = start + 1, len(layers) - (stages - stage)
        target = total * stage / stages
        # On a tie, the later cut: a parameter-free layer (an activation) stays with the layer before it.
        cut = min(range(low, high + 1), key=lambda i: (abs(cumulative[i - 1] - target), -i))
        cuts.append(cut)
        start = cut
    bounds = [0, *cuts, len(layers)]
    return [torch.nn.Sequential(*layers[a:b]) for a, b in itertools.pairwise(bounds)]


def micro_batch_slices(batch_size: int, micro_batches: int) -> list[slice]:
    """Rows of each micro-batch: ``micro_batches`` near-equal parts, the first ones a row longer (fewer
    parts for a batch with fewer rows)."""
    count = max(1, min(micro_batches, batch_size))
    sizes = [batch_size // count + (part < batch_size % count) for part in range(count)]
    bounds = np.cumsum([0, *sizes])
    return [slice(int(a), int(b)) for a, b in itertools.pairwise(bounds)]


class StagePipeline:
    """Runs one rank's stage through a batch's micro-batches, talking to its neighbour stages.

    Args:
        module: this rank's stage.
        layout: the job's layout (stage, replica, neighbour ranks).
        peers: the point-to-point channel.
        schedule: "1f1b" or "gpipe".
        micro_batches: micro-batches per batch.
        device: where the stage runs.
        autocast: the mixed-precision context the forward passes run in.

    Attributes:
        peak_saved: the most micro-batches whose activations this stage held at once (the 1F1B bound).
    """

    def __init__(self, module: torch.nn.Module, layout: Layout, peers: PeerChannel, schedule: str,
                 micro_batches: int, device: torch.device,
                 autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext) -> None:
        self.module, self.layout, self.peers = module, layout, peers
        self.schedule, self.micro_batches, self.device = schedule, micro_batches, device
        self.autocast = autocast
        self.transfer = TensorTransfer(peers, device)
        stage_actions(schedule, layout.stage, layout.pipeline, micro_batches)  # a bad schedule fails here
        self.peak_saved = 0

    def train(self, inputs: torch.Tensor, targets: Any, batch_size: int,
              step: Callable[[torch.Tensor, Any], dict[str, torch.Tensor]],
              backward: Callable[[torch.Tensor], None]) -> dict[str, torch.Tensor]:
        """Forward and backward every micro-batch of one batch.

        Args:
            inputs: the batch's inputs (used on the first stage).
            targets: the batch's targets (used on the last stage).
            batch_size: the batch's rows (every stage of a replica sees the same batch).
            step: on the last stage, ``step(outputs, targets)`` -> logs with the micro-batch's "loss".
            backward: on the last stage, back-propagates a micro-batch's weighted loss.

        Returns:
            On the last stage, the batch means of ``step``'s logs; {} elsewhere.
        """
        parts = micro_batch_slices(batch_size, self.micro_batches)
        saved: dict[int, tuple[torch.Tensor | None, torch.Tensor]] = {}
        sums: dict[str, torch.Tensor] = {}
        for action in stage_actions(self.schedule, self.layout.stage, self.layout.pipeline, len(parts)):
            part = parts[action.micro_batch]
            if action.kind == FORWARD:
                share = (part.stop - part.start) / batch_size if batch_size else 0.0
                saved[action.micro_batch] = self._forward(action.micro_batch, inputs, targets, part, share, step,
                                                          sums)
                self.peak_saved = max(self.peak_saved, len(saved))
            else:
                self._backward(action.micro_batch, *saved.pop(action.micro_batch), backward)
        self.peers.flush()
        return sums

    @torch.no_grad()
    def forward_only(self, inputs: torch.Tensor, batch_size: int) -> torch.Tensor | None:
        """The model's outputs for a batch on the last stage (None elsewhere), micro-batch by micro-batch."""
        outputs = []
        for micro, part in enumerate(micro_batch_slices(batch_size, self.micro_batches)):
            stage_input = self._stage_input(micro, inputs, part)
            with self.autocast():
                out = self.module(stage_input)
            if self.layout.is_last_stage:
                outputs.append(out)
            else:
                self._send(out, micro, self.layout.next_stage_rank, _ACTIVATION)
        self.peers.flush()
        return torch.cat(outputs) if outputs else None

    def _forward(self, micro: int, inputs: torch.Tensor, targets: Any, part: slice, share: float,
                 step: Callable[[torch.Tensor, Any], dict[str, torch.Tensor]],
                 sums: dict[str, torch.Tensor]) -> tuple[torch.Tensor | None, torch.Tensor]:
        stage_input = self._stage_input(micro, inputs, part)
        with self.autocast():
            out = self.module(stage_input)
            if not self.layout.is_last_stage:
                self._send(out.detach(), micro, self.layout.next_stage_rank, _ACTIVATION)
                return (None if self.layout.is_first_stage else stage_input), out
            logs = step(out, targets[part])
        for name, value in logs.items():
            sums[name] = sums.get(name, 0.0) + value.detach() * share
        return (None if self.layout.is_first_stage else stage_input), logs["loss"] * share

    def _stage_input(self, micro: int, inputs: torch.Tensor, part: slice) -> torch.Tensor:
        if self.layout.is_first_stage:
            return inputs[part]
        received = self._receive(micro, self.layout.previous_stage_rank, _ACTIVATION, "activations")
        return received.requires_grad_(torch.is_grad_enabled() and received.is_floating_point())

    def _backward(self, micro: int, stage_input: torch.Tensor | None, output: torch.Tensor,
                  backward: Callable[[torch.Tensor], None]) -> None:
        if self.layout.is_last_stage:
            backward(output)
        else:
            grad = self._receive(micro, self.layout.next_stage_rank, _GRADIENT, "gradients")
            torch.autograd.backward(output, grad)
        if stage_input is not None:
            # An input the stage did not use gets no gradient; the previous stage still waits for one.
            grad = stage_input.grad if stage_input.grad is not None else torch.zeros_like(stage_input)
            self._send(grad, micro, self.layout.previous_stage_rank, _GRADIENT)

    def _send(self, tensor: torch.Tensor, micro: int, dest: int, tag: int) -> None:
        self.transfer.send(tensor, [micro], dest, tag)

    def _receive(self, micro: int, source: int, tag: int, what: str) -> torch.Tensor:
        (sent_micro,), tensor = self.transfer.receive(source, tag, f"stage {self.layout.stage} waiting for "
                                                                  f"micro-batch {micro}'s {what}", extra=1)
        if sent_micro != micro:
            raise RuntimeError(f"stage {self.layout.stage} expected micro-batch {micro}'s {what} from rank {source} "
                               f"but got micro-batch {sent_micro}'s: the stages run different schedules")
        return tensor
