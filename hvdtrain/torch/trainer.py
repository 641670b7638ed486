"""A Trainer for the common case: sharded data, distributed optimizer, callbacks."""
from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch.utils.data import DataLoader

from hvdtrain.callbacks import Callback, CallbackList, default_callbacks
from hvdtrain.core.context import TrainContext
from hvdtrain.core.options import TrainingOptions, accepts_options
from hvdtrain.core.progress import StepOutcome
from hvdtrain.engine.loop import EpochLoop
from hvdtrain.torch.adapter import TorchAdapter
from hvdtrain.torch.backend import default_device
from hvdtrain.torch.data import DistributedBatchSampler, TensorBatches, as_tensors, dataset_length
from hvdtrain.torch.optimizer import DistributedOptimizer, is_distributed
from hvdtrain.torch.precision import MixedPrecision

Metric = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def accuracy(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Fraction of rows whose arg-max matches the target class.

    PyTorch's order, as for the Trainer's ``loss_fn`` and metrics: outputs first, then targets.
    """
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
        metrics: ``{name: fn(outputs, targets) -> batch mean}``; ``val_`` versions are logged too.
        callbacks: user callbacks, merged with the defaults by ``order``.
        backend: defaults to the Horovod backend (call ``hvdtrain.torch.init()`` first);
            ``hvdtrain.torch.SerialBackend()`` trains in this process alone.
        device: where the model trains; default ``cuda:<local_rank>`` with CUDA, else the CPU. The
            model is moved there before the initial broadcast, and each batch as it is used.
        num_workers: DataLoader worker processes for a non-tensor Dataset.
        options: the ``TrainingOptions`` (epochs, batch size, LR warmup, checkpoints, ...).
        **overrides: any ``TrainingOptions`` field, overriding ``options``.
    """

    @accepts_options
    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                 loss_fn: Callable[[Any, Any], torch.Tensor], train_data: Any, val_data: Any = None, *,
                 metrics: dict[str, Metric] | None = None, callbacks: Iterable[Callback] = (),
                 backend: Any = None, device: str | torch.device | None = None, num_workers: int = 0,
                 options: TrainingOptions | None = None, **overrides: Any) -> None:
        self.options = o = TrainingOptions.merged(options, overrides, "Trainer")
        if backend is None:
            from hvdtrain.torch.backend import HorovodBackend

            backend = HorovodBackend()
        self.backend = backend
        self.device = torch.device(device) if device is not None else default_device(backend.local_rank)
        self.model = model.to(self.device)
        self.precision = MixedPrecision(o.precision, self.device)
        self.adapter = TorchAdapter(backend, {"precision": self.precision} if self.precision.scaler else None)
        self.optimizer = self._distributed(optimizer, model, o)
        self.accumulation = getattr(self.optimizer, "backward_passes_per_step", 1)
        self.loss_fn = loss_fn
        self.metrics = dict(metrics or {})
        self.num_workers = num_workers
        self.sampler = DistributedBatchSampler(dataset_length(train_data), backend.rank, backend.size,
                                               o.batch_size, shuffle=True, seed=o.seed)
        self.train_batches = self._batches(train_data, self.sampler)
        self.val_data = val_data
        self.callbacks = CallbackList(default_callbacks(o, has_val=val_data is not None))
        for callback in callbacks:
            self.callbacks.add(callback)
        self._nonfinite_rank = torch.zeros((), device=self.device)
        self._this_rank_flag = torch.full((), float(backend.rank + 1), device=self.device)
        self.ctx = TrainContext(backend=backend, adapter=self.adapter, model=model, optimizer=self.optimizer,
                                max_epochs=o.epochs)

    def _distributed(self, optimizer: torch.optim.Optimizer, model: torch.nn.Module,
                     o: TrainingOptions) -> torch.optim.Optimizer:
        if is_distributed(optimizer):
            return optimizer
        if o.lr is not None:
            for group in optimizer.param_groups:
                group["lr"] = o.lr
        return DistributedOptimizer(optimizer, model, backend=self.backend, compression=o.compression, op=o.op,
                                    backward_passes_per_step=o.backward_passes_per_step, scale_lr=o.scale_lr)

    def _batches(self, data: Any, sampler: DistributedBatchSampler) -> Iterable[Any]:
        tensors = as_tensors(data)
        if tensors is not None:
            return TensorBatches(tensors, sampler)
        return DataLoader(data, batch_sampler=sampler, num_workers=self.num_workers,
                          pin_memory=self.device.type == "cuda")

    def _to_device(self, batch: Any) -> tuple[torch.Tensor, ...]:
        return tuple(t.to(self.device, non_blocking=True) for t in batch)

    def _position_data(self, epoch: int, samples_seen: int) -> int:
        self.sampler.set_epoch(epoch, samples_seen)
        return len(self.sampler)

    def _train_epoch(self, ctx: TrainContext) -> dict[str, float]:
        self.model.train()
        sums = torch.zeros(1 + len(self.metrics), dtype=torch.float64, device=self.device)
        global_sizes = self.sampler.global_batches()
        for batch in self.train_batches:
            global_size = next(global_sizes)
            self._begin_batch(ctx)
            batch = self._to_device(batch)
            outcome, values = self._train_step(ctx, batch, global_size)
            local = len(batch[0])
            sums += torch.stack([outcome.loss, *values]).double() * local
            if self._end_batch(ctx, local, global_size, outcome):
                break
        means = (sums / max(ctx.sample_count, 1)).tolist()  # the epoch's one read from the device
        return dict(zip(["loss", *self.metrics], means))

    def _train_step(self, ctx: TrainContext, batch: Any, global_size: int) -> tuple[StepOutcome, list[torch.Tensor]]:
        inputs, targets = batch[0], batch[1]
        with self.precision.autocast():
            outputs = self.model(inputs)
            loss = self.loss_fn(outputs, targets)
        weight = self._gradient_weight(ctx, len(inputs), global_size)
        update = self._is_update_step(ctx)
        self._nonfinite_rank = torch.where(torch.isfinite(loss.detach()), self._nonfinite_rank, self._this_rank_flag)
        # Enqueued before backward, the flag is reduced while the gradients are computed: it never
        # costs a Horovod cycle of its own.
        flag = self.backend.start_max(self._nonfinite_rank.reshape(1), "hvdtrain.nonfinite") if update else None
        self.precision.backward(loss * weight if weight != 1.0 else loss)
        bad_rank = self._step(flag) if update else None
        with torch.no_grad():
            values = [fn(outputs.float(), targets) for fn in self.metrics.values()]
        return StepOutcome(loss.detach(), update, nonfinite_checked=update, nonfinite_rank=bad_rank), values

    def _step(self, flag: Any) -> int | None:
        """Apply the averaged gradients unless some rank's loss was not finite.

        Args:
            flag: the pending max-allreduce of each rank's "1 + rank if not finite" flag.

        Returns:
            The highest rank whose loss was not finite, agreed by all ranks, or None.
        """
        self.optimizer.synchronize()
        bad_rank = int(self.backend.wait(flag).item()) - 1
        self._nonfinite_rank.zero_()
        if bad_rank < 0:
            self.precision.unscale(self.optimizer)
            if self.options.grad_clip_norm is not None:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.options.grad_clip_norm)
            self.precision.step(self.optimizer)
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
                                          self.options.batch_size, shuffle=False)
        sums = torch.zeros(1 + len(self.metrics), dtype=torch.float64, device=self.device)
        count = 0
        for batch in self._batches(data, sampler):
            inputs, targets = self._to_device(batch)[:2]
            with self.precision.autocast():
                outputs = self.model(inputs)
                loss = self.loss_fn(outputs, targets)
            values = [loss, *(fn(outputs.float(), targets) for fn in self.metrics.values())]
            sums += torch.stack([v.double() for v in values]) * len(inputs)
            count += len(inputs)
        totals = self.backend.allreduce_sum([*sums.tolist(), count])
        return {f"val_{name}": total / totals[-1]
                for name, total in zip(["loss", *self.metrics], totals[:-1])}
