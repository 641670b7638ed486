"""A Trainer for the common case: sharded data, distributed optimizer, callbacks."""
from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from hvdtrain.callbacks import Callback, CallbackList, LearningRateSchedule, default_callbacks
from hvdtrain.core.backend import any_rank
from hvdtrain.core.context import TrainContext
from hvdtrain.core.layout import Layout
from hvdtrain.core.options import TrainingOptions, accepts_options
from hvdtrain.core.progress import StepOutcome
from hvdtrain.engine.loop import EpochLoop
from hvdtrain.torch.adapter import TorchAdapter, state_specs
from hvdtrain.torch.backend import TorchBackend, default_backend, default_device
from hvdtrain.torch.inputs import ShardedInput, StreamingInput, batch_len, make_input, to_device
from hvdtrain.torch.named_optimizers import NamedOptimizers, by_name
from hvdtrain.torch.optimizer import DistributedOptimizer, is_distributed
from hvdtrain.torch.pipeline import StagePipeline, stage_module
from hvdtrain.torch.precision import MixedPrecision
from hvdtrain.torch.schedule import SchedulerDriver
from hvdtrain.torch.updates import ManualOptimization, OptimizerUpdate

Metric = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def accuracy(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Fraction of rows whose arg-max (over logits or probabilities) matches the class label.

    The same as ``hvdtrain.tensorflow.accuracy``. Either order works: the argument with a class
    dimension (more dimensions, or a last dimension above 1) holds the outputs; labels of the same
    shape are one-hot.
    """
    if outputs.dim() < targets.dim() or (outputs.dim() == targets.dim() and outputs.shape[-1] == 1
                                         and targets.shape[-1] != 1):
        outputs, targets = targets, outputs
    predicted = outputs.argmax(dim=-1).reshape(-1)
    if targets.shape == outputs.shape:
        targets = targets.argmax(dim=-1)
    return (predicted == targets.reshape(-1)).float().mean()


Step = Callable[..., "torch.Tensor | Mapping[str, Any]"]


class Trainer(EpochLoop):
    """Data-parallel training with Horovod and hvdtrain's callbacks.

    The step is ``training_step(batch)``: by default ``loss_fn(model(x), y)`` on ``(x, y)`` batches
    plus the ``metrics``. Give your own as ``training_step=``/``validation_step=`` functions or by
    overriding the methods in a subclass; it returns the loss or a dict with a ``"loss"`` and any
    other values to log. Gradient averaging, accumulation, clipping, mixed precision and the
    non-finite-loss check run around it.

    Several optimizers (a GAN's generator and discriminator) are given as ``{name: optimizer}`` and
    driven by a ``training_step(batch, opt)``: ``opt.backward(loss, name)`` then ``opt.step(name)``
    for each (``ManualOptimization``), with the same averaging, accumulation, clipping, loss scaling
    and non-finite check per optimizer. ``self.optimizer`` and ``ctx.optimizer`` are then a
    ``NamedOptimizers``, whose param groups and state cover them all. See docs/custom_steps.md.

    Args:
        model: the network; every rank builds it the same way (several networks: one ``nn.ModuleDict``).
            Split into pipeline stages (``hvdtrain.torch.init(pipeline=P)``), it is the stages: a list
            of P modules, an ``nn.Sequential`` (cut into P runs of layers) or a builder ``stage -> module``
            (no rank builds another stage's layers). See docs/parallelism.md.
        optimizer: a plain torch optimizer (wrapped for you) or one already
            wrapped with ``hvdtrain.torch.DistributedOptimizer``; or several as ``{name: optimizer}``,
            each over its own parameters (then ``training_step`` takes ``(batch, opt)``). With a
            pipeline: a factory ``params -> optimizer``, or one optimizer of one parameter group (it is
            rebuilt over each stage's parameters).
        loss_fn: ``loss_fn(outputs, targets)`` returning the batch-mean loss (the default step's).
        train_data: tensors, a ``TensorDataset``, a map-style Dataset (sharded for you), a
            ``DataLoader`` (re-sharded through its sampler when it has a standard one, else used as
            this rank's shard) or an ``IterableDataset`` (this rank's shard; ranks may yield different
            numbers of batches: every epoch ends at the same step on all ranks).
        val_data: optional validation data (same kinds); evaluated every epoch.
        training_step: ``fn(batch) -> loss | {"loss": ..., name: value}`` replacing the default step,
            or ``fn(batch, opt)`` that runs backward and step itself through ``opt``.
        validation_step: ``fn(batch) -> {name: batch mean}``, logged with a ``val_`` prefix.
        lr_scheduler: a ``torch.optim.lr_scheduler`` built on ``optimizer`` with single-worker LRs;
            stepped every optimizer step or epoch (``lr_scheduler_interval``), with the world-size
            scaling and ``warmup_epochs``/``lr_schedule`` multiplied on top; checkpointed. One
            optimizer only.
        metrics: ``{name: fn(outputs, targets) -> batch mean}``; ``val_`` versions are logged too.
        callbacks: user callbacks, merged with the defaults by ``order``.
        backend: defaults to the Horovod backend (call ``hvdtrain.torch.init()`` first);
            ``hvdtrain.torch.SerialBackend()`` trains in this process alone.
        device: where the model trains; default ``cuda:<local_rank>`` with CUDA, else the CPU. The
            model is moved there before the initial broadcast, and each batch as it is used.
        num_workers: DataLoader worker processes for a Dataset hvdtrain wraps in a DataLoader. For a
            map-style Dataset they are started once and kept for every epoch (``persistent_workers``),
            so they hold the copy of the Dataset made at the first epoch.
        options: the ``TrainingOptions`` (epochs, batch size, LR warmup, checkpoints, ...).
        **overrides: any ``TrainingOptions`` field, overriding ``options``.
    """

    @accepts_options
    def __init__(self, model: torch.nn.Module | Sequence[torch.nn.Module] | Callable[[int], torch.nn.Module],
                 optimizer: torch.optim.Optimizer | Mapping[str, torch.optim.Optimizer],
                 loss_fn: Callable[[Any, Any], torch.Tensor] | None = None, train_data: Any = None,
                 val_data: Any = None, *, training_step: Step | None = None, validation_step: Step | None = None,
                 lr_scheduler: Any = None, metrics: dict[str, Metric] | None = None,
                 callbacks: Iterable[Callback] = (), backend: TorchBackend | None = None,
                 device: str | torch.device | None = None,
                 num_workers: int = 0, options: TrainingOptions | None = None, **overrides: Any) -> None:
        self.options = o = TrainingOptions.merged(options, overrides, "Trainer")
        if train_data is None:
            raise TypeError("Trainer() needs train_data: tensors, a Dataset, an IterableDataset or a DataLoader")
        if loss_fn is None and training_step is None and type(self).training_step is Trainer.training_step:
            raise TypeError("Trainer() needs loss_fn= for its default step loss_fn(model(x), y), or your own "
                            "training_step=")
        if backend is None:
            backend = default_backend()
        self.backend = backend
        self.device = torch.device(device) if device is not None else default_device(backend.local_rank)
        if self.layout.pipeline > 1:
            _check_pipeline_options(o, optimizer, training_step, validation_step, type(self))
        if self.layout.pipeline > 1 or not isinstance(model, torch.nn.Module):  # the model given as stages
            model = stage_module(model, self.layout.stage, self.layout.pipeline)
            optimizer = _stage_optimizer(optimizer, model)
        self.model = model.to(self.device)
        self.precision = MixedPrecision(o.precision, self.device)
        self.pipeline = StagePipeline(self.model, self.layout, backend.peers, o.pipeline_schedule, o.micro_batches,
                                      self.device, self.precision.autocast) if self.layout.pipeline > 1 else None
        self.optimizer = self._distributed(optimizer, model, o)
        self.lr_scheduler = self._driver(lr_scheduler, o)
        # Checkpointed and broadcast beside the model and optimizer: the loss scale, the LR scheduler.
        extra = {"precision": self.precision if self.precision.scaler else None, "lr_scheduler": self.lr_scheduler}
        self.adapter = TorchAdapter(backend, {name: obj for name, obj in extra.items() if obj is not None})
        self.accumulation = self._accumulation()
        self.loss_fn = loss_fn
        self.metrics = dict(metrics or {})
        self.num_workers = num_workers
        if training_step is not None:
            self.training_step = training_step
        if validation_step is not None:
            self.validation_step = validation_step
        self.manual = _takes_two_arguments(self.training_step)
        if isinstance(self.optimizer, NamedOptimizers) and not self.manual:
            raise TypeError("with several optimizers, training_step takes (batch, opt) and calls "
                            "opt.backward(loss, name) and opt.step(name) for each")
        self.opt = ManualOptimization({name: OptimizerUpdate(name, each, backend, self.precision, o.grad_clip_norm,
                                                             self.device)
                                       for name, each in by_name(self.optimizer).items()}, self.precision)
        self.train_data = train_data
        self.train_input = self._input(train_data, shuffle=True)
        self._val_input: tuple[Any, ShardedInput | StreamingInput] | None = None  # (val_data, its input), kept
        if self.layout.parts > 1 and self.train_input.streaming:
            raise TypeError("a pipeline's stages (or a tensor group's slices) must each read the same batches: give "
                            "tensors, a Dataset or a DataLoader with a standard sampler (hvdtrain shards them), not "
                            "a stream each rank reads on its own")
        self.val_data = val_data
        self.callbacks = CallbackList(default_callbacks(o, has_val=val_data is not None))
        for callback in callbacks:
            self.callbacks.add(callback)
        self._drive_learning_rates()
        self.ctx = TrainContext(backend=backend, adapter=self.adapter, model=model, optimizer=self.optimizer,
                                max_epochs=o.epochs, scale_lr=o.lr_follows_world_size)

    @property
    def layout(self) -> Layout:
        """Pipeline stages x data replicas, read live from the backend (elastic training resizes it)."""
        return self.backend.layout

    def _distributed(self, optimizer: torch.optim.Optimizer | Mapping[str, torch.optim.Optimizer],
                     model: torch.nn.Module, o: TrainingOptions) -> torch.optim.Optimizer | NamedOptimizers:
        """The optimizer wrapped for Horovod; several by name each over its own parameters."""
        if isinstance(optimizer, Mapping):
            if o.shard_optimizer_state:
                raise ValueError(f"shard_optimizer_state={o.shard_optimizer_state} shards one optimizer, and this "
                                 f"Trainer has {len(optimizer)} ({sorted(optimizer)}): use one optimizer with a "
                                 "parameter group each, or shard_optimizer_state=0")
            NamedOptimizers(optimizer, model)  # a parameter in two optimizers fails before any is wrapped
            return NamedOptimizers({name: self._distributed(each, model, o) for name, each in optimizer.items()})
        if is_distributed(optimizer):
            return optimizer
        if o.lr is not None:
            for group in optimizer.param_groups:
                group["lr"] = o.lr
        # Each micro-batch of a pipeline is a backward pass of its own.
        passes = o.backward_passes_per_step * (o.micro_batches if self.pipeline else 1)
        return DistributedOptimizer(optimizer, model, backend=self.backend, compression=o.compression, op=o.op,
                                    backward_passes_per_step=passes, scale_lr=o.scale_lr,
                                    shard_optimizer_state=o.shard_optimizer_state)

    def _accumulation(self) -> int:
        if self.pipeline:
            return self.options.backward_passes_per_step
        passes = {getattr(each, "backward_passes_per_step", 1) for each in by_name(self.optimizer).values()}
        if len(passes) > 1:
            raise ValueError(f"the optimizers accumulate different numbers of batches ({sorted(passes)}); "
                             "give them one backward_passes_per_step")
        return passes.pop()

    def _driver(self, scheduler: Any, o: TrainingOptions) -> SchedulerDriver | None:
        if scheduler is None:
            return None
        if isinstance(self.optimizer, NamedOptimizers):
            raise TypeError("lr_scheduler= drives a single optimizer; with several, use lr_schedule= and "
                            "warmup_epochs= (they set every optimizer's LRs)")
        return SchedulerDriver(scheduler, self.optimizer, o.lr_scheduler_interval, self._lr_scale(o))

    def _lr_scale(self, o: TrainingOptions) -> int:
        """The linear scaling rule's factor for this world size (1 when it is off)."""
        return self.layout.data_size if o.lr_follows_world_size else 1

    def _drive_learning_rates(self) -> None:
        """Let the LR callback take its base LRs from the lr_scheduler, adding one if there is none."""
        if self.lr_scheduler is None:
            return
        schedules = [c for c in self.callbacks if isinstance(c, LearningRateSchedule)]
        if not schedules:
            schedules = [LearningRateSchedule()]
            self.callbacks.add(schedules[0])
        for schedule in schedules:
            schedule.base_rates = self.lr_scheduler.rates

    def _input(self, data: Any, shuffle: bool) -> ShardedInput | StreamingInput:
        o = self.options
        return make_input(data, self.layout.data_rank, self.layout.data_size, o.batch_size, shuffle=shuffle,
                          seed=o.seed, num_workers=self.num_workers, pin_memory=self.device.type == "cuda",
                          device=self.device)

    def _position_data(self, epoch: int, samples_seen: int) -> int | None:
        return self.train_input.set_epoch(epoch, samples_seen, self.ctx.progress.batches_done)

    def _model_specs(self) -> list[tuple[str, tuple[int, ...], str]]:
        return state_specs(self.model)

    def _after_elastic_load(self, old_size: int) -> None:
        self.optimizer.zero_grad()
        self.opt.reset()
        self.train_input = self._input(self.train_data, shuffle=True)
        self._val_input = None
        if self.lr_scheduler:
            self.lr_scheduler.scale = self._lr_scale(self.options)

    # The steps users may replace.

    def training_step(self, batch: Any) -> torch.Tensor | Mapping[str, Any]:
        """The loss of one batch (and values to log): by default ``loss_fn(model(x), y)`` and the metrics.

        A ``training_step(batch, opt)`` taking a second argument runs its optimizers itself through
        ``opt`` (a ``ManualOptimization``), e.g. a GAN's discriminator and generator steps.
        """
        return self._default_step(batch, "training_step")

    def validation_step(self, batch: Any) -> torch.Tensor | Mapping[str, Any]:
        """Batch means to log with a ``val_`` prefix: by default the loss and the metrics."""
        return self._default_step(batch, "validation_step")

    def predict_step(self, batch: Any) -> torch.Tensor:
        """The model's outputs for a batch: by default ``model(x)`` for ``(x, ...)`` batches, else ``model(batch)``."""
        return self.model(batch[0] if isinstance(batch, (tuple, list)) else batch)

    def _default_step(self, batch: Any, name: str) -> dict[str, torch.Tensor]:
        inputs, targets = self._pair(batch, name)
        return self._step_logs(self.model(inputs), targets)

    def _pair(self, batch: Any, name: str) -> tuple[Any, Any]:
        if self.loss_fn is None:
            raise TypeError(f"Trainer has no loss_fn for its default {name}: pass loss_fn= or {name}=")
        if not isinstance(batch, (tuple, list)) or len(batch) < 2:
            raise TypeError(f"the default {name} takes (inputs, targets) batches, not {type(batch).__name__}: "
                            f"pass {name}=fn(batch) (or override it in a subclass) for other batches")
        return batch[0], batch[1]

    def _step_logs(self, outputs: torch.Tensor, targets: Any) -> dict[str, torch.Tensor]:
        """The default step's loss and metrics of ``outputs``."""
        logs = {"loss": self.loss_fn(outputs, targets)}
        if self.metrics:
            with torch.no_grad():
                logs.update({metric: fn(outputs.float(), targets) for metric, fn in self.metrics.items()})
        return logs

    def _as_logs(self, result: Any, step: str) -> dict[str, torch.Tensor]:
        """A step's result as ``{name: scalar tensor}``; a bare tensor is the loss."""
        if isinstance(result, torch.Tensor):
            return {"loss": result}
        if not isinstance(result, Mapping) or (step == "training_step" and "loss" not in result):
            got = sorted(result) if isinstance(result, Mapping) else type(result).__name__
            raise TypeError(f"{step} must return the loss tensor or a dict with a 'loss' entry (got {got})")
        return {name: _logged(value, self.device) for name, value in result.items()}

    # Training.

    def _train_epoch(self, ctx: TrainContext) -> dict[str, float]:
        self.model.train()
        sums = _WeightedSums(self.device)
        sizes = None if self.train_input.streaming else self.train_input.global_sizes()
        on_device = self.train_input.on_device
        for batch, has_next in self._epoch_batches():
            self._begin_batch(ctx)
            if not on_device:
                batch = to_device(batch, self.device)
            local = batch_len(batch)
            outcome, logs, global_size, last = self._train_step(ctx, batch, local, sizes and next(sizes), has_next)
            sums.add(logs, local)
            if self._end_batch(ctx, local, global_size, outcome) or last:
                break
        if self.lr_scheduler and self.lr_scheduler.interval == "epoch" and not ctx.stop_training:
            self.lr_scheduler.step()
        totals = sums.totals()
        means = (torch.stack(list(totals.values())) / max(ctx.sample_count, 1)).tolist() if totals else []
        return dict(zip(totals, means))  # the epoch's one read

    def _epoch_batches(self) -> Iterator[tuple[Any, bool]]:
        """(batch, has next) for the epoch; a streamed epoch is empty everywhere if one rank has no batch."""
        batches = iter(self.train_input)
        return self._streamed(batches) if self.train_input.streaming else batches

    def _streamed(self, batches: Iterator[tuple[Any, bool]]) -> Iterator[tuple[Any, bool]]:
        first = next(batches, None)
        if any_rank(self.backend, first is None):
            return
        yield first
        yield from batches

    def _train_step(self, ctx: TrainContext, batch: Any, local: int, global_size: int | None,
                    has_next: bool) -> tuple[StepOutcome, dict[str, torch.Tensor], int, bool]:
        """Forward, backward and (on an update step) the optimizer steps of one batch.

        Returns:
            The outcome, the logged values, the global batch size, and whether the epoch ends here
            (streamed input: some rank has no next batch, agreed alongside the gradients).
        """
        update = self._is_update_step(ctx)
        # Streamed: "no next batch" and the sample count are reduced while forward and backward run.
        stream = _StreamEnd(self.backend, has_next, local) if global_size is None else None
        weight = self._gradient_weight(ctx, local, global_size or local * ctx.data_size)
        self.opt.start_batch(weight, update, stream.ends_epoch if stream else lambda: False, ctx.global_step + 1)
        logs = self._run_training_step(batch)
        checked, bad_rank = self.opt.finish_batch()
        last, global_size = stream.result() if stream else (False, global_size)
        update = update or last  # the epoch ends mid accumulation round: what was accumulated was applied
        if update and self.lr_scheduler and self.lr_scheduler.interval == "step":
            self.lr_scheduler.step()
        loss = logs["loss"].detach()
        outcome = StepOutcome(loss, update, nonfinite_checked=checked, nonfinite_rank=bad_rank)
        return outcome, {**logs, "loss": loss}, int(global_size), last

    def _run_training_step(self, batch: Any) -> dict[str, torch.Tensor]:
        """The user's step; in automatic mode the Trainer runs backward and step for it."""
        if self.pipeline:
            return self._pipeline_step(batch)
        if self.manual:
            with self.precision.autocast():
                return self._as_logs(self.training_step(batch, self.opt), "training_step")
        with self.precision.autocast():
            logs = self._as_logs(self.training_step(batch), "training_step")
        self.opt.backward_and_step(logs["loss"])
        return logs

    def _pipeline_step(self, batch: Any) -> dict[str, torch.Tensor]:
        """This stage's passes of the batch's micro-batches, then one world allreduce that brings the last
        stage's logs to every rank and agrees on non-finite losses, then the update."""
        inputs, targets = self._pair(batch, "training_step")
        size = batch_len(batch)

        def micro_batches(update: OptimizerUpdate, weight: float) -> tuple[dict[str, torch.Tensor], OptimizerUpdate]:
            logs = self.pipeline.train(inputs, targets, size, self._step_logs,
                                     lambda loss: update.backward(loss, weight, start_check=False, own_only=False))
            return logs, update

        logs, update = self.opt.backward_with(micro_batches)
        logs, highest_flag = self._share_last_stage(logs, size, update.flag)
        update.flags_agreed(highest_flag)
        self.opt.step()
        return logs

    def _share_last_stage(self, logs: dict[str, torch.Tensor], local: int,
                          flag: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """One world sum (over MPI: no Horovod cycle to wait for): the last stage's batch means averaged over
        its replicas, known on every rank, and the highest of the ranks' non-finite flags (each rank's flag
        in its own slot)."""
        names = ["loss", *self.metrics]
        last = self.layout.is_last_stage
        zero = torch.zeros((), dtype=torch.float64, device=self.device)
        values = [logs[name].detach().double().reshape(()) * local if last else zero for name in names]
        count = torch.tensor(float(local if last else 0), dtype=torch.float64, device=self.device)
        flags = torch.zeros(self.backend.size, dtype=torch.float64, device=self.device)
        flags[self.backend.rank] = flag.double()
        vector = torch.cat([torch.stack([*values, count]), flags]).cpu().numpy()
        totals = torch.from_numpy(self.backend.peers.sum(vector, f"the logs of step {self.ctx.global_step + 1}"))
        sums, count, flags = totals[:len(names)], totals[len(names)], totals[len(names) + 1:]
        return dict(zip(names, sums / count)), flags.max()

    # Evaluation and prediction.

    @torch.no_grad()
    def evaluate(self, data: Any = None) -> dict[str, float]:
        """The ``validation_step`` values on validation data, exact over all ranks (``val_`` prefixed)."""
        data = self.val_data if data is None else data
        if data is None:
            return {}
        self.model.eval()
        sums = _WeightedSums(self.device)
        count = 0
        for batch, _ in self._evaluation_input(data):
            batch = to_device(batch, self.device)
            local = batch_len(batch)
            logs = self._evaluate_batch(batch, local)
            if logs is None:  # a pipeline stage before the last
                continue
            sums.add(logs, local)
            count += local
        totals = sums.totals()
        names = list(dict.fromkeys(n for names in self.backend.allgather_object(list(totals)) for n in names))
        values = torch.stack([totals.get(n, torch.zeros((), dtype=torch.float64, device=self.device)).cpu()
                              for n in names]).tolist() if names else []
        totals = self.backend.allreduce_sum([*values, count])
        return {f"val_{name}": total / max(totals[-1], 1) for name, total in zip(names, totals[:-1])}

    def _evaluation_input(self, data: Any) -> ShardedInput | StreamingInput:
        """The input of ``data``; the validation data's is kept, so its loader workers live across epochs."""
        if data is not self.val_data:
            return self._input(data, shuffle=False)
        if self._val_input is None or self._val_input[0] is not data:
            self._val_input = (data, self._input(data, shuffle=False))
        return self._val_input[1]

    def _evaluate_batch(self, batch: Any, local: int) -> dict[str, torch.Tensor] | None:
        if self.pipeline is None:
            with self.precision.autocast():
                return self._as_logs(self.validation_step(batch), "validation_step")
        inputs, targets = self._pair(batch, "validation_step")
        outputs = self.pipeline.forward_only(inputs, local)
        if outputs is None:
            return None
        with self.precision.autocast():
            return self._step_logs(outputs, targets)

    @torch.no_grad()
    def predict(self, data: Any, *, all_ranks: bool = False) -> Any:
        """The model's outputs (``predict_step``) on ``data``, every rank predicting its shard.

        Args:
            data: tensors or a Dataset (outputs come back in sample order) or a streamed input
                (outputs come back rank by rank).
            all_ranks: return the outputs on every rank; by default only rank 0 gets them.

        Returns:
            One tensor of outputs, row i for sample i; None on ranks other than 0 unless ``all_ranks``.
        """
        self.model.eval()
        source = self._input(data, shuffle=False)
        outputs = []
        for batch, _ in source:
            batch = to_device(batch, self.device)
            if self.pipeline is not None:
                out = self.pipeline.forward_only(batch[0] if isinstance(batch, (tuple, list)) else batch,
                                               batch_len(batch))
                outputs += [] if out is None else [out.float().cpu()]
                continue
            with self.precision.autocast():
                outputs.append(self.predict_step(batch).float().cpu())
        order = None if source.streaming else np.concatenate([*source.sampler.order, np.zeros(0, dtype=np.int64)])
        if self.layout.tensor_rank > 0:  # the group's first slice speaks for it: the others hold the same rows
            outputs = []
        gathered = self.backend.allgather_object((order, torch.cat(outputs) if outputs else None))
        if not all_ranks and self.backend.rank != 0:
            return None
        return _in_sample_order(gathered)


def _check_pipeline_options(o: TrainingOptions, optimizer: Any, training_step: Step | None,
                            validation_step: Step | None, trainer: type) -> None:
    """What a pipeline cannot do yet, refused before anything is built."""
    steps = ("training_step", "validation_step", "predict_step")
    custom = training_step is not None or validation_step is not None or \
        any(getattr(trainer, step) is not getattr(Trainer, step) for step in steps)
    problems = [
        (custom, "runs the default step loss_fn(model(x), y) with metrics=: a custom training_step, "
                 "validation_step or predict_step cannot be split across stages"),
        (o.op == "adasum", "averages gradients (op='average' or 'sum'): Adasum is not supported in a pipeline yet"),
        (is_distributed(optimizer), "builds each stage's distributed optimizer itself: give the plain optimizer "
                                    "(or a factory params -> optimizer), not one already wrapped"),
    ]
    for failed, message in problems:
        if failed:
            raise ValueError(f"a pipeline (hvdtrain.torch.init(pipeline=P)) {message}")


def _stage_optimizer(optimizer: Any, stage: torch.nn.Module) -> torch.optim.Optimizer:
    """The optimizer over this stage's parameters: built by a factory, or a copy of a one-group optimizer."""
    if isinstance(optimizer, torch.optim.Optimizer):
        if len(optimizer.param_groups) != 1:
            raise ValueError("with a pipeline, give an optimizer of one parameter group (it is rebuilt over each "
                             "stage's parameters) or a factory params -> optimizer")
        # The group's settings the constructor takes (not what schedulers add, such as initial_lr).
        group = optimizer.param_groups[0]
        return type(optimizer)(stage.parameters(), **{key: group[key] for key in optimizer.defaults if key in group})
    if callable(optimizer) and not isinstance(optimizer, Mapping):
        return optimizer(stage.parameters())
    raise TypeError("with a pipeline, the optimizer is one torch optimizer or a factory params -> optimizer "
                    f"(got {type(optimizer).__name__})")


def _takes_two_arguments(step: Callable[..., Any]) -> bool:
    """Whether a training step takes ``(batch, opt)``: it then steps its optimizers itself."""
    try:
        parameters = inspect.signature(step).parameters.values()
    except (TypeError, ValueError):  # no signature to read: the one-argument step
        return False
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return sum(p.kind in positional for p in parameters) >= 2


def _logged(value: Any, device: torch.device) -> torch.Tensor:
    """A value a step returned to log, as a tensor on ``device`` that no later in-place update changes: a result
    the step computed (a ``grad_fn`` and storage of its own) as it is; a parameter or a view of one, a buffer or
    a tensor held elsewhere, copied now (the epoch's sums read it later)."""
    if not isinstance(value, torch.Tensor) or value.device != device:
        return torch.as_tensor(value, device=device)
    if value.grad_fn is not None and not value._is_view():
        return value
    return value.detach().clone()


class _WeightedSums:
    """Per-name sums of batch values weighted by batch size, kept on the device: a batch costs a list append
    per value, and every ``FOLD`` batches fold into one float64 tensor per name (few tensors held)."""

    FOLD = 256

    def __init__(self, device: torch.device) -> None:
        self._device = device
        self._values: dict[str, list[torch.Tensor]] = {}
        self._weights: dict[str, list[float]] = {}
        self._folded: dict[str, torch.Tensor] = {}

    def add(self, logs: Mapping[str, torch.Tensor], weight: int) -> None:
        """Add one batch's values (scalar tensors), each weighted by ``weight`` samples."""
        for name, value in logs.items():
            values = self._values.setdefault(name, [])
            values.append(self._kept(value))
            self._weights.setdefault(name, []).append(float(weight))
            if len(values) == self.FOLD:
                self._fold(name)

    def _kept(self, value: torch.Tensor) -> torch.Tensor:
        kept = value.detach() if value.requires_grad else value
        return kept if kept.device == self._device else kept.to(self._device)

    def totals(self) -> dict[str, torch.Tensor]:
        """``{name: sum of weight * value}`` as float64 scalar tensors, in first-seen order."""
        for name in self._values:
            self._fold(name)
        return dict(self._folded)

    def _fold(self, name: str) -> None:
        values, weights = self._values[name], self._weights[name]
        if not values:
            return
        factors = torch.tensor(weights, dtype=torch.float64)
        if self._device.type == "cuda":  # copied without waiting for the GPU
            factors = factors.pin_memory().to(self._device, non_blocking=True)
        weighted = torch.stack(values).double().reshape(len(values)) @ factors
        self._folded[name] = self._folded[name] + weighted if name in self._folded else weighted
        values.clear()
        weights.clear()


class _StreamEnd:
    """Streamed input: whether some rank has no next batch, and the batch's global size, summed over the
    ranks while the step runs and waited for when first needed."""

    def __init__(self, backend: TorchBackend, has_next: bool, local: int) -> None:
        self.backend = backend
        self._handle = backend.start_sum(torch.tensor([float(not has_next), local], dtype=torch.float64),
                                         "hvdtrain.stream")
        self._result: tuple[bool, int] | None = None

    def result(self) -> tuple[bool, int]:
        if self._result is None:
            ended, size = self.backend.wait(self._handle).tolist()
            self._result = (ended > 0, int(size))
        return self._result

    def ends_epoch(self) -> bool:
        return self.result()[0]


def _in_sample_order(gathered: list[tuple[np.ndarray | None, torch.Tensor | None]]) -> torch.Tensor:
    """Every rank's outputs as one tensor, row i for sample i (rank by rank when the order is unknown)."""
    parts = [(order, out) for order, out in gathered if out is not None]
    outputs = torch.cat([out for _, out in parts])
    if any(order is None for order, _ in parts):
        return outputs
    order = torch.from_numpy(np.concatenate([order for order, _ in parts]))
    return outputs[torch.argsort(order)]
