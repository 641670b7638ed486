"""Make a Keras 3 optimizer average its gradients across workers with Horovod.

Horovod's own ``horovod.tensorflow.keras.DistributedOptimizer`` predates
Keras 3 and fails inside ``model.fit``. This module uses only Horovod's core
TensorFlow ops instead. ``model.fit``'s train step calls
``optimizer.apply_gradients``, which calls ``optimizer.apply``: that is the
hook. The optimizer's class is swapped for a subclass whose ``apply`` runs one
grouped allreduce (through the backend) over all gradients and then the original ``apply``,
so ``isinstance``, ``get_config``, saving and the optimizer's state are
unchanged.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import keras
import tensorflow as tf

from hvdtrain.core.options import COMPRESSIONS, OptionsError, TrainingOptions
from hvdtrain.tensorflow.backend import TensorFlowBackend, default_backend
from hvdtrain.tensorflow.schedule import ScaledSchedule, learning_rate_owner, scale_learning_rate

_OPS = ("average", "sum")
_CLASS_CACHE: dict[type, type] = {}


@dataclass(frozen=True)
class GradientReducer:
    """How gradients are combined across ranks: one grouped allreduce per dtype and call.

    Args:
        op: "average" or "sum".
        compression: "none" or "fp16" (halves the bytes sent; slower on CPU).
        predivide: divide by this before the sum and multiply back after
            (keeps fp16 sums in range); 1.0 disables.
    """

    op: str = "average"
    compression: str = "none"
    predivide: float = 1.0

    def __post_init__(self) -> None:
        if self.op not in _OPS:
            raise ValueError(f"op must be one of {list(_OPS)} (got {self.op!r})")
        if self.compression not in COMPRESSIONS:
            raise ValueError(f"compression must be one of {sorted(COMPRESSIONS)} (got {self.compression!r})")
        if self.predivide <= 0:
            raise ValueError(f"gradient_predivide_factor must be > 0 (got {self.predivide})")

    def reduce(self, tensors: Sequence[Any], backend: TensorFlowBackend) -> list[Any]:
        """Allreduce every non-None tensor through ``backend``; works eagerly and in a ``tf.function``.

        ``tf.IndexedSlices`` (embedding gradients) are made dense first. None
        entries stay None; every rank must pass the same structure.
        """
        out = list(tensors)
        present = [i for i, t in enumerate(out) if t is not None]
        if not present or backend.size == 1:
            return out
        by_dtype: dict[tf.DType, list[int]] = {}
        for i in present:
            out[i] = tf.convert_to_tensor(out[i])
            by_dtype.setdefault(out[i].dtype, []).append(i)
        post = self.predivide / backend.size if self.op == "average" else self.predivide
        # A grouped allreduce takes one dtype: one group per dtype, in first-seen order (the same on all ranks).
        for positions in by_dtype.values():
            reduced = backend.grouped_allreduce([out[i] for i in positions], self.compression,
                                                1.0 / self.predivide, post)
            for i, tensor in zip(positions, reduced):
                out[i] = tensor
        return out


class _DistributedOptimizer:
    """Mixin put in front of the user's optimizer class by ``DistributedOptimizer``."""

    _hvd_reducer: GradientReducer
    _hvd_backend: TensorFlowBackend
    _hvd_passes: int
    _hvd_clip_norm: float | None = None
    _hvd_scale_lr: bool = False

    @property
    def backward_passes_per_step(self) -> int:
        return self._hvd_passes

    @property
    def gradient_clip_norm(self) -> float | None:
        """The global norm the combined gradients are clipped to here (None: not clipped here)."""
        return self._hvd_clip_norm

    def build(self, variables: Sequence[Any]) -> None:
        super().build(variables)
        self._hvd_add_accumulators(list(variables))

    def _hvd_add_accumulators(self, variables: list[Any]) -> None:
        # Optimizer variables, so checkpoints and the initial broadcast include them.
        if self._hvd_passes > 1 and not getattr(self, "_hvd_accumulators", None):
            self._hvd_pass_count = self.add_variable((), dtype="int64", name="hvd_pass_count")
            self._hvd_accumulators = [self.add_variable_from_reference(v, name="hvd_accumulator")
                                      for v in variables]

    def reduce_gradients(self, grads: Sequence[Any]) -> list[Any]:
        """Gradients combined across ranks (no update)."""
        return self._hvd_reducer.reduce(grads, self._hvd_backend)

    def apply_reduced(self, grads: Sequence[Any], trainable_variables: Sequence[Any] | None = None) -> None:
        """Apply gradients that are already combined across ranks (no communication)."""
        return super().apply(list(grads), trainable_variables)

    def scale_loss(self, loss: Any) -> Any:
        """Keras' train step passes each loss here before taking gradients: note whether it is finite."""
        self.note_loss(loss)
        return super().scale_loss(loss)

    def note_loss(self, loss: Any) -> None:
        """Remember whether this rank's ``loss`` was not finite; the next reduction tells every rank."""
        local = self._hvd_loss_flags()[0]
        local.assign(tf.logical_or(local, tf.logical_not(tf.reduce_all(tf.math.is_finite(loss)))))

    def pop_nonfinite_rank(self) -> int | None:
        """The highest rank whose loss was not finite since the last call (its update was skipped), or None.

        Eager; for ``KerasBridge``, which reads it after every batch of ``model.fit``.
        """
        bad_rank = self._hvd_loss_flags()[1]
        # The bare read op: a quarter of the cost of ``bad_rank.numpy()``, paid after every batch.
        value = int(tf.raw_ops.ReadVariableOp(resource=bad_rank.handle, dtype=bad_rank.dtype))
        if value < 0:
            return None
        bad_rank.assign(-1)
        return value

    def forget_noted_losses(self) -> None:
        """Drop the loss flags of a step a lost worker interrupted (elastic training rolled back)."""
        local, bad_rank = self._hvd_loss_flags()
        local.assign(False)
        bad_rank.assign(-1)

    def follow_world_size(self) -> None:
        """Elastic training changed the world: a schedule scaled by the world size takes the new one.

        Its factor is no state (not committed nor synced), so it is set, not rescaled; a float rate is
        part of the committed state, rescaled with it. Trace the steps that apply updates anew.
        """
        rate = learning_rate_owner(self)._learning_rate
        if self._hvd_scale_lr and isinstance(rate, ScaledSchedule):
            rate.factor = float(self._hvd_backend.size)

    def _hvd_loss_flags(self) -> tuple[tf.Variable, tf.Variable]:
        # Plain tf.Variables, not Keras ones: transient, so not checkpointed or broadcast.
        if getattr(self, "_hvd_flags", None) is None:
            with tf.init_scope():
                self._hvd_flags = (tf.Variable(False, trainable=False, name="hvd_local_nonfinite"),
                                   tf.Variable(-1, dtype=tf.int32, trainable=False, name="hvd_nonfinite_rank"))
        return self._hvd_flags

    def reduce_and_apply(self, grads: Sequence[Any], variables: Sequence[Any],
                         clip_norm: float | None = None) -> tf.Tensor:
        """One allreduce of the gradients and of every rank's noted loss flag; apply only if all were finite.

        Args:
            grads: this rank's gradients, one per variable (None allowed).
            variables: the variables they belong to.
            clip_norm: clip the combined gradients to this global norm first.

        Returns:
            The highest rank whose loss was not finite (the update was skipped everywhere), or -1.
        """
        local = self._hvd_loss_flags()[0]
        size = self._hvd_backend.size
        flag = tf.one_hot(self._hvd_backend.rank, size) * tf.cast(local, tf.float32)
        *reduced, flag = self.reduce_gradients([*grads, flag])
        local.assign(False)
        # Averaged or summed, a rank's slot is > 0 exactly when its loss was not finite.
        worst = tf.reduce_max(tf.where(flag > 0.0, tf.range(size), -1))

        def update() -> None:
            self.apply_reduced(_clipped(reduced, clip_norm), variables)

        tf.cond(worst < 0, update, lambda: None)
        return worst

    def _hvd_reduce_and_apply(self, grads: Sequence[Any], variables: Sequence[Any]) -> None:
        bad_rank = self._hvd_loss_flags()[1]
        bad_rank.assign(tf.maximum(bad_rank, self.reduce_and_apply(grads, variables, self._hvd_clip_norm)))

    def apply(self, grads: Sequence[Any], trainable_variables: Sequence[Any] | None = None) -> None:
        """Average ``grads`` across ranks, then apply them (every n-th call with accumulation)."""
        variables = self._hvd_variables(trainable_variables)  # built here: never inside the tf.cond below
        if self._hvd_passes == 1:
            return self._hvd_reduce_and_apply(grads, variables)
        self.accumulate_gradients(grads, variables)
        count = self._hvd_pass_count.assign_add(1)

        def reduce_and_apply() -> None:
            total = self.accumulated_gradients([None] * len(variables), variables, 1.0 / self._hvd_passes)
            self._hvd_reduce_and_apply(total, variables)

        tf.cond(tf.equal(count % self._hvd_passes, 0), reduce_and_apply, lambda: None)
        return None

    def _hvd_variables(self, trainable_variables: Sequence[Any] | None) -> list[Any]:
        if trainable_variables is None:
            if not self.built:
                raise ValueError("pass the trainable variables on the first apply, or build the optimizer first "
                                 "with optimizer.build(model.trainable_variables)")
            return list(self._trainable_variables)
        variables = list(trainable_variables)
        if not self.built:
            self.build(variables)
        return variables

    def accumulate_gradients(self, grads: Sequence[Any], variables: Sequence[Any]) -> None:
        """Add ``grads`` to this rank's accumulators (local, no communication)."""
        for grad, accumulator in zip(grads, self._hvd_accumulators_for(variables)):
            if grad is not None:
                accumulator.assign_add(tf.convert_to_tensor(grad))

    def accumulated_gradients(self, grads: Sequence[Any], variables: Sequence[Any], scale: float) -> list[Any]:
        """``(accumulated + grads) * scale`` per variable, then zero the accumulators."""
        total = []
        for grad, accumulator in zip(grads, self._hvd_accumulators_for(variables)):
            value = tf.convert_to_tensor(accumulator)
            if grad is not None:
                value = value + tf.convert_to_tensor(grad)
            total.append(value * scale)
            accumulator.assign(tf.zeros_like(value))
        return total

    def _hvd_accumulators_for(self, variables: Sequence[Any]) -> list[Any]:
        if self._hvd_passes == 1:
            raise RuntimeError("this optimizer does not accumulate gradients (backward_passes_per_step=1)")
        return [self._hvd_accumulators[self._get_variable_index(v)] for v in variables]


def _clip_here(optimizer: keras.optimizers.Optimizer, clip_norm: float | None) -> float | None:
    """Gradients are clipped after the reduction; a loss-scaled optimizer's inner one clips the unscaled ones."""
    if clip_norm is not None and isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        optimizer.inner_optimizer.global_clipnorm = clip_norm
        return None
    return clip_norm


def _clipped(grads: list[Any], clip_norm: float | None) -> list[Any]:
    if clip_norm is None:
        return grads
    present = iter(tf.clip_by_global_norm([g for g in grads if g is not None], clip_norm)[0])
    return [None if g is None else next(present) for g in grads]


def DistributedOptimizer(optimizer: keras.optimizers.Optimizer, *, backend: TensorFlowBackend | None = None,
                         compression: str = "none", backward_passes_per_step: int = 1, op: str = "average",
                         scale_lr: bool = True,
                         gradient_predivide_factor: float = 1.0,
                         clip_norm: float | None = None) -> keras.optimizers.Optimizer:
    """Make ``optimizer`` average its gradients across workers before applying them.

    The optimizer is converted in place and returned: it becomes an instance
    of a subclass of its own class, so ``isinstance``, ``get_config``, model
    saving (it is saved as its original class) and its state are kept. Use it
    with ``model.compile(optimizer=...)`` or in a custom loop. Convert it
    before the first ``fit``/train step traces it.

    Args:
        optimizer: a Keras 3 optimizer.
        backend: the job's backend (default: Horovod's; call ``hvdtrain.tensorflow.init()`` first).
        compression: "none" or "fp16".
        backward_passes_per_step: accumulate this many local gradients, then
            average the mean of them across workers and apply it once.
        op: "average" or "sum".
        scale_lr: multiply the learning rate by the world size (the linear
            scaling rule; pair it with LR warmup). A ``LearningRateSchedule``
            is wrapped in a ``ScaledSchedule`` (also without scaling), which
            hvdtrain's warmup and ``lr_schedule`` multiply.
        gradient_predivide_factor: divide before the sum, multiply after (fp16 range).
        clip_norm: clip the combined gradients to this global norm before applying them.

    Returns:
        The same optimizer object, now distributed.

    Raises:
        ValueError: bad arguments, an already distributed optimizer, or one
            using Keras' own ``gradient_accumulation_steps``.
    """
    reducer = GradientReducer(op, compression, gradient_predivide_factor)
    if backward_passes_per_step < 1:
        raise ValueError(f"backward_passes_per_step must be >= 1 (got {backward_passes_per_step})")
    if not isinstance(optimizer, keras.optimizers.Optimizer):
        raise ValueError(f"expected a Keras 3 optimizer, got {type(optimizer).__name__}; "
                         "pass e.g. keras.optimizers.SGD(learning_rate=0.01)")
    if is_distributed(optimizer):
        raise ValueError("this optimizer is already distributed; convert the plain optimizer once")
    if getattr(optimizer, "gradient_accumulation_steps", None) and backward_passes_per_step > 1:
        raise ValueError("the optimizer already accumulates gradients (gradient_accumulation_steps); "
                         "use backward_passes_per_step here instead, not both")
    if backend is None:
        backend = default_backend()
    scale_learning_rate(optimizer, backend.size if scale_lr else 1)
    optimizer.__class__ = _distributed_class(type(optimizer))
    optimizer._hvd_reducer = reducer
    optimizer._hvd_backend = backend
    optimizer._hvd_passes = backward_passes_per_step
    optimizer._hvd_clip_norm = _clip_here(optimizer, clip_norm)
    optimizer._hvd_scale_lr = scale_lr
    if optimizer.built:
        optimizer._hvd_add_accumulators(list(optimizer._trainable_variables))
    return optimizer


def is_distributed(optimizer: Any) -> bool:
    """True if ``optimizer`` was converted by ``DistributedOptimizer``."""
    return isinstance(optimizer, _DistributedOptimizer)


def _distributed_class(cls: type) -> type:
    if cls not in _CLASS_CACHE:
        # Same name and module: Keras serializes the optimizer as its original class.
        _CLASS_CACHE[cls] = type(cls.__name__, (_DistributedOptimizer, cls),
                                 {"__module__": cls.__module__, "__qualname__": cls.__qualname__})
    return _CLASS_CACHE[cls]


def check_keras_options(options: TrainingOptions) -> None:
    """Refuse the options only the PyTorch Trainer implements.

    Raises:
        OptionsError: ``shard_optimizer_state`` is set.
    """
    if options.shard_optimizer_state:
        raise OptionsError(f"shard_optimizer_state={options.shard_optimizer_state} is PyTorch-only: Keras optimizers "
                           "keep their whole state on every worker here; use shard_optimizer_state=0",
                           "shard_optimizer_state")
