"""Applying gradients: one distributed optimizer's backward, agreed non-finite check and step, and the
handle through which a ``training_step(batch, opt)`` drives several optimizers (GANs)."""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
import torch

from hvdtrain.torch.backend import TorchBackend
from hvdtrain.torch.named_optimizers import parameters_of
from hvdtrain.torch.precision import MixedPrecision
from hvdtrain.torch.sharded_optimizer import ShardedState
from hvdtrain.torch.tensor_parallel import is_tensor_parallel

T = TypeVar("T")


class OptimizerUpdate:
    """One distributed optimizer's part of a training step.

    ``backward`` keeps the detached loss and, on an update step, starts agreeing whether every rank's
    losses were finite before the gradients' allreduce (so it rides in the same Horovod cycle); ``apply`` runs
    Horovod's order: synchronize, unscale, clip this optimizer's parameters, step without a second
    allreduce, zero_grad; the step is skipped on every rank when any rank's loss was not finite.

    Args:
        name: the optimizer's name (its flag's collective is named after it).
        optimizer: a distributed optimizer.
        backend: the job's backend.
        precision: the Trainer's mixed precision (one loss scaler for every optimizer).
        clip_norm: clip the averaged gradients to this norm; None does not clip.
        device: where the flags live (the model's device).
    """

    def __init__(self, name: str, optimizer: torch.optim.Optimizer, backend: TorchBackend, precision: MixedPrecision,
                 clip_norm: float | None, device: torch.device) -> None:
        self.name = name
        self.optimizer = optimizer
        self.backend = backend
        self.precision = precision
        self.clip_norm = clip_norm
        self.parameters = parameters_of(optimizer)  # a sharded optimizer's: this replica's slices
        self.sharded = isinstance(optimizer, ShardedState)
        self._flag_name = f"hvdtrain.nonfinite.{name}"
        self._device = device
        self._losses: list[torch.Tensor] = []  # the detached losses since the last update
        self._check: Any = None  # the started sum of the ranks' poisons
        self._agreed: torch.Tensor | None = None  # or the flags' max, agreed by the caller's own collective
        self.reset()

    def reset(self) -> None:
        """Forget the losses and checks (after an elastic load: this rank's number may have changed)."""
        self._losses = []
        self._check = None
        self._agreed = None

    @property
    def flag(self) -> torch.Tensor:
        """1 + this rank if a loss since the last update was not finite, else 0 (for a caller that agrees the
        ranks' flags in a collective of its own)."""
        if not self._losses:
            return torch.zeros((), device=self._device)
        finite = torch.isfinite(torch.stack(self._losses).float()).all()
        return torch.where(finite, 0.0, float(self.backend.rank + 1))

    def flags_agreed(self, highest: torch.Tensor) -> None:
        """The ranks' flags were agreed in a collective of the caller's (``highest``: their max): the next
        ``apply`` runs no check of its own (a pipeline shares them with the last stage's logs)."""
        self._agreed = highest

    def backward(self, loss: torch.Tensor, weight: float, start_check: bool, own_only: bool) -> None:
        """Back-propagate ``loss * weight``; ``own_only``: into this optimizer's parameters alone."""
        self._losses.append(loss.detach())
        if start_check:
            self._check = self._start_check()
        inputs = [p for p in self.parameters if p.requires_grad] if own_only else None
        self.precision.backward(loss * weight if weight != 1.0 else loss, inputs)
        if self.sharded:
            self.optimizer.after_backward(ends_step=start_check)

    def _start_check(self) -> Any:
        """Start summing the round's losses over the ranks: the sum is finite when every loss was (NaN and
        inf stay in a sum). No op on the way for a round of one batch."""
        losses = self._losses or [torch.zeros((), device=self._device)]
        # float32: every wire has it, and a round of float16 losses could overflow its own sum.
        total = losses[0].float() if len(losses) == 1 else torch.stack(losses).float().sum()
        return self.backend.start_sum(total, self._flag_name)

    def _bad_rank(self, check: Any) -> int:
        """The highest rank whose loss was not finite, or -1; looked for only when the losses' sum was not
        finite, by a second agreement that every rank then reaches (finite losses whose sum overflowed
        find none)."""
        if math.isfinite(self.backend.wait(check).item()):
            return -1
        own_finite = all(math.isfinite(loss.item()) for loss in self._losses)
        return int(self.backend.allreduce_max([0.0 if own_finite else self.backend.rank + 1.0])[0]) - 1

    def apply(self, step_number: int) -> int | None:
        """Apply the averaged gradients unless some rank's loss was not finite.

        Returns:
            The highest rank whose loss was not finite, agreed by all ranks, or None.
        """
        agreed, self._agreed = self._agreed, None
        check, self._check = self._check, None
        if agreed is None and check is None:  # late: a streamed epoch's end
            check = self._start_check()
        with self.backend.watch(f"the gradient allreduce of step {step_number}"):
            self.optimizer.synchronize()
            bad_rank = int(agreed.item()) - 1 if check is None else self._bad_rank(check)
        self._losses = []
        if bad_rank < 0:
            if self.precision.scaler is not None and (self.backend.layout.parts > 1 or self.sharded):
                self._agree_overflow(step_number)
            self.precision.unscale(self.optimizer)
            if self.clip_norm is not None:
                self._clip()
            self.precision.step(self.optimizer)
        self.optimizer.zero_grad()
        return bad_rank if bad_rank >= 0 else None

    def _agree_overflow(self, step_number: int) -> None:
        """float16 across a pipeline, or with sharded gradients: each stage's (or replica's) scaler sees only
        its own gradients, so the ranks agree over the world (a pipeline's on its MPI communicator) whether
        any overflowed; then every scaler finds an overflow, skips the step and lowers its scale, and the
        scales stay equal."""
        grads = [p.grad for p in self.parameters if p.grad is not None]
        finite = bool(torch.stack([g.isfinite().all() for g in grads]).all()) if grads else True
        overflowed = self._world_sum(0.0 if finite else 1.0, f"the float16 overflow check of step {step_number}")
        held = next((g for g in grads if g.numel()), None)  # a sharded rank's first slice may be empty
        if overflowed and finite and held is not None:
            held.view(-1)[0] = float("inf")

    def _world_sum(self, value: float, what: str) -> float:
        """``value`` summed over the world: on a pipeline's MPI communicator, else a Horovod allreduce."""
        if self.backend.layout.pipeline > 1:
            return self.backend.peers.sum(np.array([value]), what)[0]
        return self.backend.allreduce_sum([value])[0]

    def _clip(self) -> None:
        """Clip to ``clip_norm`` by the norm of the whole model's averaged gradients. Across a pipeline's stages
        or a tensor group's slices, the squared norms are summed over the world (each part counted once per
        replica), on a pipeline's MPI communicator as the step's other agreement is."""
        layout = self.backend.layout
        if self.sharded:
            self.optimizer.clip_grad_norm_(self.clip_norm)
            return
        if layout.parts == 1:
            torch.nn.utils.clip_grad_norm_(self.parameters, self.clip_norm)
            return
        held = [p for p in self.parameters if p.grad is not None]
        grads = [p.grad for p in held]
        squares = torch.zeros((), dtype=torch.float64, device=self._device)
        for param in held:  # a tensor group's replicated parameters are held whole by each rank: counted once
            share = 1.0 if is_tensor_parallel(param) else 1.0 / layout.tensor
            squares += param.grad.detach().double().square().sum() * share
        total = self._world_sum(squares.item(), "the gradient norm across stages")
        scale = (self.clip_norm / (torch.tensor(total / layout.data_size, dtype=torch.float64,
                                                device=squares.device).sqrt() + 1e-6)).clamp(max=1.0)
        for grad in grads:
            grad.mul_(scale.to(grad.dtype))


@dataclass
class _Batch:
    """What the Trainer tells the handle about the batch being run, and what the step did."""

    weight: float
    update: bool
    ends_epoch: Callable[[], bool]
    step_number: int
    backward: set[str] = field(default_factory=set)
    stepped: set[str] = field(default_factory=set)
    checked: bool = False
    bad_ranks: list[int] = field(default_factory=list)

    def applies(self) -> bool:
        """Gradients are applied at this batch: it ends an accumulation round, or a streamed epoch."""
        return self.update or self.ends_epoch()


class ManualOptimization:
    """What a ``training_step(batch, opt)`` gets to drive the Trainer's optimizers itself (e.g. a GAN).

    For each optimizer, once per batch: ``opt.backward(loss, name)`` then ``opt.step(name)``::

        def gan_step(batch, opt):
            d_loss = ...
            opt.backward(d_loss, "discriminator")  # gradients for the discriminator's parameters only
            opt.step("discriminator")              # averaged over ranks, unscaled, clipped, applied
            g_loss = ...
            opt.backward(g_loss, "generator")
            opt.step("generator")
            return {"loss": d_loss + g_loss, "d_loss": d_loss, "g_loss": g_loss}

    ``backward`` weighs the loss (an uneven final batch, gradient accumulation), scales it (float16)
    and, with several optimizers, gives gradients to that optimizer's parameters alone
    (``loss.backward(inputs=...)``), so a generator loss flowing through the discriminator leaves the
    discriminator's gradients (and its Horovod allreduces) alone: no ``toggle_optimizer`` is needed.
    ``step`` applies them in Horovod's order, or skips them on every rank when any rank's loss given
    to ``backward`` was not finite; between the batches of an accumulation round it only accumulates.
    Every rank must make the same calls in the same order.
    ``opt[name]`` is the distributed optimizer; with one optimizer the name may be left out.
    """

    def __init__(self, updates: dict[str, OptimizerUpdate], precision: MixedPrecision) -> None:
        self._updates = updates
        self._precision = precision
        self._batch: _Batch | None = None
        self._only = next(iter(updates.values())) if len(updates) == 1 else None

    def __getitem__(self, name: str) -> torch.optim.Optimizer:
        return self._update(name).optimizer

    def backward(self, loss: torch.Tensor, name: str | None = None) -> None:
        """Gradients of ``loss`` for optimizer ``name``'s parameters (once per optimizer and batch).

        Raises:
            ValueError: a second backward for ``name`` in this batch (add the losses instead).
        """
        own_only = len(self._updates) > 1
        self.backward_with(lambda update, weight: update.backward(loss, weight, start_check=self._batch.update,
                                                                  own_only=own_only), name)

    def backward_with(self, run: Callable[[OptimizerUpdate, float], T], name: str | None = None) -> T:
        """The batch's backward for optimizer ``name``, run by ``run(update, loss weight)`` (a pipeline's
        micro-batches); returns what ``run`` returns. Once per optimizer and batch, as ``backward``."""
        update, batch = self._update(name), self._current("backward")
        if update.name in batch.backward:
            raise ValueError(f"backward(loss, {update.name!r}) ran twice in one batch: add the losses and "
                             "call it once (Horovod allreduces each gradient once per backward pass)")
        batch.backward.add(update.name)
        return run(update, batch.weight)

    def step(self, name: str | None = None) -> None:
        """Apply optimizer ``name``'s averaged gradients (or, mid accumulation round, keep them).

        Raises:
            ValueError: no ``backward(loss, name)`` ran before it in this batch.
        """
        update, batch = self._update(name), self._current("step")
        if update.name not in batch.backward or update.name in batch.stepped:
            raise ValueError(f"step({update.name!r}) needs a backward(loss, {update.name!r}) before it in the "
                             "same batch, and runs once per batch")
        batch.stepped.add(update.name)
        self._apply(update, batch)

    def backward_and_step(self, loss: torch.Tensor) -> None:
        """The automatic step of the Trainer's only optimizer: ``backward(loss)`` then ``step()``, without the
        checks of a user's calls (the Trainer makes each once)."""
        update, batch = self._only, self._batch
        update.backward(loss, batch.weight, start_check=batch.update, own_only=False)
        self._apply(update, batch)

    def _apply(self, update: OptimizerUpdate, batch: _Batch) -> None:
        if batch.applies():
            bad_rank = update.apply(batch.step_number)
            batch.checked = True
            if bad_rank is not None:
                batch.bad_ranks.append(bad_rank)

    def _update(self, name: str | None) -> OptimizerUpdate:
        if name is None and len(self._updates) == 1:
            return next(iter(self._updates.values()))
        if name not in self._updates:
            raise KeyError(f"no optimizer named {name!r}: the Trainer's optimizers are {list(self._updates)}")
        return self._updates[name]

    def _current(self, call: str) -> _Batch:
        if self._batch is None:
            raise RuntimeError(f"opt.{call}() runs inside the Trainer's training_step only")
        return self._batch

    # The Trainer's side.

    def start_batch(self, weight: float, update: bool, ends_epoch: Callable[[], bool], step_number: int) -> None:
        """Begin a batch: its loss weight, whether it ends an accumulation round, and (streamed input)
        how to learn whether it ends the epoch."""
        self._batch = _Batch(weight, update, ends_epoch, step_number)

    def finish_batch(self) -> tuple[bool, int | None]:
        """End the batch and update the loss scale.

        Returns:
            Whether the ranks agreed on non-finite losses (some optimizer applied or skipped its
            gradients), and the highest rank whose loss was not finite, or None.

        Raises:
            ValueError: an optimizer had a backward but no step.
        """
        batch, self._batch = self._current("finish_batch"), None
        missing = batch.backward - batch.stepped
        if missing:
            raise ValueError(f"training_step ran backward(loss, name) but not step(name) for {sorted(missing)}: every "
                             "backward needs its step in the same batch")
        self._precision.update()
        return batch.checked, max(batch.bad_ranks, default=None)

    def reset(self) -> None:
        """Forget a batch cut short and every flag (after an elastic load)."""
        self._batch = None
        for update in self._updates.values():
            update.reset()
