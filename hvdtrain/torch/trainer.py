"""A Trainer for the common case: sharded data, distributed optimizer, callbacks."""
from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import horovod.torch as hvd
import torch
from torch.utils.data import DataLoader

from hvdtrain.callbacks import Callback, CallbackList, default_callbacks
from hvdtrain.callbacks.defaults import check_resume_target
from hvdtrain.callbacks.early_stopping import NONFINITE_RANK
from hvdtrain.core.backend import Backend
from hvdtrain.core.context import TrainContext
from hvdtrain.core.loop import EpochLoop
from hvdtrain.torch.adapter import TorchAdapter
from hvdtrain.torch.backend import HorovodBackend
from hvdtrain.torch.data import DistributedBatchSampler, TensorBatches, as_tensors, dataset_length
from hvdtrain.torch.optimizer import DistributedOptimizer, is_distributed

Metric = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def accuracy(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Fraction of rows whose arg-max matches the target class."""
    return (outputs.argmax(dim=1) == targets).float().mean()


class Trainer(EpochLoop):
    """Data-parallel training with Horovod and hvdtrain's callbacks.

    Args:
        model: the network; every rank builds it the same way.
        optimizer: a plain torch optimizer (wrapped for you) or one already
            wrapped with ``hvdtrain.torch.DistributedOptimizer``.
        loss_fn: ``loss_fn(outputs, targets)`` returning the batch-mean loss.
        train_data: a ``TensorDataset``, a tuple of tensors, or a map-style Dataset.
        val_data: optional validation data (same kinds); evaluated every epoch.
        batch_size: samples per step on each rank.
        max_epochs: epochs to train.
        metrics: ``{name: fn(outputs, targets) -> batch mean}``; ``val_`` versions are logged too.
        callbacks: user callbacks, merged with the defaults by ``order``.
        backend: defaults to the Horovod backend (call ``hvdtrain.torch.init()`` first).
        seed: seed of the data order (identical on all ranks).
        grad_clip_norm: clip the averaged gradients to this norm.
        compression, backward_passes_per_step, op, scale_lr: see ``DistributedOptimizer``.
        warmup_epochs: linear LR warmup length (Goyal et al.); 0 disables.
        lr_schedule: multiplier of the base LR as a function of the fractional epoch.
        checkpoint_dir: save checkpoints here (rank 0).
        checkpoint_every_n_steps: also save mid-epoch every n steps.
        keep_last, keep_best, monitor: checkpoint retention; ``monitor`` also drives early stopping.
        resume: True resumes from ``checkpoint_dir``; a path resumes from that file or directory.
        early_stopping_patience: stop after this many epochs without ``monitor`` improving.
        log_dir: write ``metrics.csv`` and TensorBoard events here (rank 0).
        progress: show a tqdm bar on rank 0.
        num_workers: DataLoader worker processes for a non-tensor Dataset.
    """

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                 loss_fn: Callable[[Any, Any], torch.Tensor], train_data: Any, val_data: Any = None, *,
                 batch_size: int = 32, max_epochs: int = 1, metrics: dict[str, Metric] | None = None,
                 callbacks: Iterable[Callback] = (), backend: Backend | None = None, seed: int = 0,
                 grad_clip_norm: float | None = None, compression: str = "none",
                 backward_passes_per_step: int = 1, op: str = "average", scale_lr: bool = True,
                 warmup_epochs: float = 0.0, lr_schedule: Callable[[float], float] | None = None,
                 checkpoint_dir: str | os.PathLike | None = None,
                 checkpoint_every_n_steps: int | None = None, keep_last: int = 2, keep_best: int = 1,
                 monitor: str = "val_loss", resume: bool | str | os.PathLike = False,
                 early_stopping_patience: int | None = None, log_dir: str | os.PathLike | None = None,
                 progress: bool = True, num_workers: int = 0) -> None:
        if max_epochs < 1:
            raise ValueError(f"max_epochs must be >= 1 (got {max_epochs})")
        check_resume_target(resume, checkpoint_dir)
        self.backend = backend or HorovodBackend()
        self.adapter = TorchAdapter(self.backend)
        self.model = model
        if not is_distributed(optimizer):
            optimizer = DistributedOptimizer(optimizer, model, compression=compression, op=op,
                                             backward_passes_per_step=backward_passes_per_step,
                                             scale_lr=scale_lr)
        self.optimizer = optimizer
        self._set_accumulation(getattr(optimizer, "backward_passes_per_step", 1), checkpoint_every_n_steps)
        self.loss_fn = loss_fn
        self.metrics = dict(metrics or {})
        self.max_epochs = max_epochs
        self.grad_clip_norm = grad_clip_norm
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.sampler = DistributedBatchSampler(dataset_length(train_data), self.backend.rank, self.backend.size,
                                               batch_size, shuffle=True, seed=seed)
        self.train_batches = self._batches(train_data, self.sampler)
        self.val_data = val_data
        self.callbacks = CallbackList(default_callbacks(
            warmup_epochs=warmup_epochs, lr_schedule=lr_schedule, checkpoint_dir=checkpoint_dir,
            every_n_steps=checkpoint_every_n_steps, keep_last=keep_last, keep_best=keep_best, monitor=monitor,
            resume=resume, patience=early_stopping_patience, log_dir=log_dir, progress=progress,
            has_val=val_data is not None))
        for callback in callbacks:
            self.callbacks.add(callback)
        self._nonfinite_rank = torch.zeros(())
        self.ctx = TrainContext(backend=self.backend, adapter=self.adapter, model=model, optimizer=optimizer,
                                max_epochs=max_epochs)

    def _batches(self, data: Any, sampler: DistributedBatchSampler) -> Iterable[Any]:
        tensors = as_tensors(data)
        if tensors is not None:
            return TensorBatches(tensors, sampler)
        return DataLoader(data, batch_sampler=sampler, num_workers=self.num_workers)

    def _position_data(self, epoch: int, samples_seen: int) -> int:
        self.sampler.set_epoch(epoch, samples_seen)
        return len(self.sampler)

    def _train_epoch(self, ctx: TrainContext) -> dict[str, float]:
        self.model.train()
        sums = torch.zeros(1 + len(self.metrics), dtype=torch.float64)
        ctx.sample_count = 0
        global_sizes = self.sampler.global_batches()
        for batch in self.train_batches:
            global_size = next(global_sizes)
            self.callbacks.on_batch_begin(ctx)
            loss, values = self._train_step(ctx, batch, global_size)
            local = len(batch[0])
            sums += torch.stack([loss, *values]).double() * local
            if self._end_batch(ctx, local, global_size, loss):
                break
        means = (sums / max(ctx.sample_count, 1)).tolist()
        return dict(zip(["loss", *self.metrics], means))

    def _train_step(self, ctx: TrainContext, batch: Sequence[Any],
                    global_size: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
        inputs, targets = batch[0], batch[1]
        outputs = self.model(inputs)
        loss = self.loss_fn(outputs, targets)
        weight = self._gradient_weight(ctx, len(inputs), global_size)
        sync = self._is_update_step(ctx)
        self._nonfinite_rank = torch.where(torch.isfinite(loss.detach()), self._nonfinite_rank,
                                           torch.tensor(float(ctx.rank + 1)))
        # Enqueued before backward, the flag is reduced while the gradients are computed: it never
        # costs a Horovod cycle of its own.
        flag = hvd.allreduce_async(self._nonfinite_rank.reshape(1), op=hvd.Max, name="hvdtrain.nonfinite") \
            if sync else None
        (loss * weight if weight != 1.0 else loss).backward()
        loss = loss.detach()
        if sync:
            ctx.extras[NONFINITE_RANK] = self._step(flag)
        else:
            ctx.extras.pop(NONFINITE_RANK, None)
        with torch.no_grad():
            values = [fn(outputs, targets) for fn in self.metrics.values()]
        return loss, values

    def _step(self, flag: Any) -> int | None:
        """Apply the averaged gradients unless some rank's loss was not finite.

        Args:
            flag: the pending Horovod max-allreduce of each rank's "1 + rank if not finite" flag.

        Returns:
            The highest rank whose loss was not finite, agreed by all ranks, or None.
        """
        self.optimizer.synchronize()
        bad_rank = int(hvd.synchronize(flag).item()) - 1
        self._nonfinite_rank = torch.zeros(())
        if bad_rank < 0:
            if self.grad_clip_norm is not None:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip_norm)
            with self.optimizer.skip_synchronize():
                self.optimizer.step()
        self.optimizer.zero_grad()
        return bad_rank if bad_rank >= 0 else None

    @torch.no_grad()
    def evaluate(self, data: Any = None) -> dict[str, float]:
        """Loss and metrics on validation data, exact over all ranks (``val_`` prefixed)."""
        data = self.val_data if data is None else data
        if data is None:
            return {}
        self.model.eval()
        sampler = DistributedBatchSampler(dataset_length(data), self.backend.rank, self.backend.size,
                                          self.batch_size, shuffle=False)
        sums = [0.0] * (2 + len(self.metrics))
        for batch in self._batches(data, sampler):
            outputs = self.model(batch[0])
            n = len(batch[0])
            values = [self.loss_fn(outputs, batch[1]), *(fn(outputs, batch[1]) for fn in self.metrics.values())]
            sums = [s + float(v) * n for s, v in zip(sums, [*values, 1.0])]
        totals = self.backend.allreduce_sum(sums)
        return {f"val_{name}": total / totals[-1]
                for name, total in zip(["loss", *self.metrics], totals[:-1])}
