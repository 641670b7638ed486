"""Sharded optimizer state (ZeRO stages 1 and 2) on Horovod's reducescatter and allgather.

Each parameter group's parameters are laid out in flat buckets, and every parameter becomes a view
of its bucket. A bucket of ``n`` elements is cut across the ``N`` data-parallel replicas as Horovod's
reducescatter cuts it: replica ``r`` owns ``n // N + (r < n % N)`` consecutive elements. The user's
optimizer keeps its class and hyperparameters but steps only this replica's slices (views into the
same buckets), so its state (Adam's moments, SGD's momentum) is 1/N of the whole::

    backward -> reducescatter (average) each bucket's gradients -> step this replica's slices
             -> allgather the slices back into the buckets: every replica holds the new weights

Stage 1 reduces the accumulated gradients once per step; stage 2 after every backward pass, keeping
only this replica's gradient slice between the passes of an accumulation round. ``state_dict`` is
the per-parameter state an unsharded optimizer writes (gathered a bucket at a time), so a checkpoint
resumes at any number of replicas, sharded or not. The optimizer must update each element from
that element's own gradient and state, as every ``torch.optim`` optimizer but LBFGS does.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from hvdtrain.torch.named_optimizers import hyperparameters

BUCKET_ELEMENTS = 1 << 22  # 16 MiB of float32 per bucket: the most a checkpoint gathers at once
STAGES = (1, 2)


def shard_ranges(total: int, parts: int) -> list[tuple[int, int]]:
    """(start, size) of each replica's slice of ``total`` elements, as Horovod's reducescatter cuts them."""
    sizes = [total // parts + (r < total % parts) for r in range(parts)]
    starts = [sum(sizes[:r]) for r in range(parts)]
    return list(zip(starts, sizes))


@dataclass
class _Bucket:
    """Consecutive parameters of one group laid out in one flat tensor, and this replica's slice of it."""

    index: int
    group: int
    params: list[torch.Tensor]
    flat: torch.Tensor
    start: int
    size: int
    slice: torch.Tensor = None  # type: ignore[assignment]  # this replica's view: what the optimizer steps

    def __post_init__(self) -> None:
        self.slice = self.flat[self.start:self.start + self.size]

    def offsets(self) -> Iterator[tuple[torch.Tensor, int]]:
        offset = 0
        for param in self.params:
            yield param, offset
            offset += param.numel()

    def flat_gradient(self) -> torch.Tensor:
        return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in self.params])


def _buckets(groups: list[list[torch.Tensor]], data_rank: int, data_size: int) -> list[_Bucket]:
    """Cut each group's parameters into buckets of at most ``BUCKET_ELEMENTS`` (one parameter may be more)
    of one dtype and device, and make each parameter a view of its bucket."""
    cut: list[tuple[int, list[torch.Tensor]]] = []
    for group, params in enumerate(groups):
        current: list[torch.Tensor] = []
        for param in params:
            fits = current and current[0].dtype == param.dtype and current[0].device == param.device and \
                sum(p.numel() for p in current) + param.numel() <= BUCKET_ELEMENTS
            if current and not fits:
                cut.append((group, current))
                current = []
            current.append(param)
        if current:
            cut.append((group, current))
    buckets = []
    for index, (group, params) in enumerate(cut):
        flat = torch.cat([p.detach().reshape(-1) for p in params])
        start, size = shard_ranges(flat.numel(), data_size)[data_rank]
        bucket = _Bucket(index, group, params, flat, start, size)
        for param, offset in bucket.offsets():
            param.data = flat[offset:offset + param.numel()].view_as(param)
        buckets.append(bucket)
    return buckets


def shard_optimizer_state(optimizer: torch.optim.Optimizer, backend: Any, stage: int,
                          backward_passes_per_step: int = 1) -> torch.optim.Optimizer:
    """``optimizer`` (the same object, its class extended) stepping only this replica's slices.

    Args:
        optimizer: a ``torch.optim`` optimizer over the model's parameters, not yet stepped.
        backend: the job's PyTorch backend (its data-parallel group shards the state).
        stage: 1 shards the optimizer state; 2 the gradients between accumulation passes too.
        backward_passes_per_step: backward passes accumulated per step.

    Raises:
        ValueError: an unknown stage, an optimizer that is already distributed or has state.
    """
    if stage not in STAGES:
        raise ValueError(f"shard_optimizer_state must be 0 (off), 1 or 2 (got {stage})")
    if callable(getattr(optimizer, "synchronize", None)):
        raise ValueError("shard the plain torch optimizer: this one is already distributed")
    if optimizer.state:
        raise ValueError("shard the optimizer before its first step: it already holds state")
    groups = [list(group["params"]) for group in optimizer.param_groups]  # frozen ones too: the state's ids
    layout = backend.layout
    buckets = _buckets([[p for p in params if p.requires_grad] for params in groups], layout.data_rank,
                       layout.data_size)
    if all(b.flat.numel() < layout.data_size for b in buckets):  # the last replica would hold nothing
        raise ValueError(f"the optimizer's {sum(b.flat.numel() for b in buckets)} trainable elements are too few "
                         f"to shard across {layout.data_size} replicas (some would hold none): use "
                         "shard_optimizer_state=0 for so small a model")
    for index, group in enumerate(optimizer.param_groups):
        group["params"] = [b.slice for b in buckets if b.group == index]
    # An LR scheduler built on the optimizer wrapped its step in an attribute of the object: it would hide the
    # sharded step (and its allgather). The Trainer's scheduler driver counts steps itself.
    optimizer.__dict__.pop("step", None)
    optimizer.__class__ = type(type(optimizer).__name__, (ShardedState, type(optimizer)), {})
    optimizer._setup_sharding(backend, stage, backward_passes_per_step, buckets, groups)
    return optimizer


class ShardedState:
    """What ``shard_optimizer_state`` adds to the user's optimizer class: the distributed optimizer's
    ``synchronize``/``skip_synchronize`` API over sharded state, and the unsharded ``state_dict``."""

    backward_passes_per_step: int

    def _setup_sharding(self, backend: Any, stage: int, passes: int, buckets: list[_Bucket],
                        groups: list[list[torch.Tensor]]) -> None:
        self._backend, self.sharding_stage, self.backward_passes_per_step = backend, stage, passes
        self._buckets, self._group_params = buckets, groups
        self._synchronized = False  # this step's averaged gradients are in the slices' .grad
        self._skip = False
        self._loaded: dict[str, Any] | None = None  # a full state loaded here, kept for broadcast_state

    @property
    def model_parameters(self) -> list[torch.Tensor]:
        """The model's parameters this optimizer updates (``param_groups`` holds their slices)."""
        return [p for params in self._group_params for p in params]

    # Gradients.

    def reduce_gradients(self) -> None:
        """Collective: average this backward pass's gradients over the replicas into this replica's
        slices (adding to earlier passes' of the round), then free the full gradients."""
        for bucket in self._buckets:  # one at a time: at most one flat bucket beyond the gradients
            handle = self._backend.start_reducescatter(bucket.flat_gradient(), f"hvdtrain.shard.grad.{bucket.index}")
            for param in bucket.params:
                param.grad = None
            shard = self._backend.wait(handle).to(bucket.flat.dtype)
            target = bucket.slice
            target.grad = shard if target.grad is None else target.grad.add_(shard)

    def after_backward(self, ends_step: bool) -> None:
        """Stage 2: reduce the pass's gradients now, unless the step's ``synchronize`` will."""
        if self.sharding_stage == 2 and not ends_step:
            self.reduce_gradients()

    def synchronize(self) -> None:
        """Collective: the step's averaged gradients into this replica's slices (once per step, on every rank
        alike: a rank without gradients sends zeros)."""
        if not self._synchronized:
            self.reduce_gradients()
            self._synchronized = True

    @contextlib.contextmanager
    def skip_synchronize(self) -> Iterator[None]:
        self._skip = True
        try:
            yield
        finally:
            self._skip = False

    def clip_grad_norm_(self, max_norm: float) -> torch.Tensor:
        """Clip the averaged gradients to ``max_norm`` by the whole model's norm (the slices' squared norms
        summed over the replicas), as ``torch.nn.utils.clip_grad_norm_`` clips an unsharded model."""
        grads = [b.slice.grad for b in self._buckets if b.slice.grad is not None]
        squares = sum((g.detach().double().square().sum() for g in grads), torch.zeros((), dtype=torch.float64))
        every = self._backend.wait(self._backend.start_allgather(squares.reshape(1), "hvdtrain.shard.grad_norm"))
        total = float(every.sum()) ** 0.5
        scale = min(1.0, max_norm / (total + 1e-6))
        for grad in grads:
            grad.mul_(scale)
        return torch.tensor(total)

    # Stepping.

    def step(self, closure: Any = None) -> Any:
        """Step this replica's slices, then allgather every bucket: all replicas hold the new weights."""
        if not self._skip:
            self.synchronize()
        loss = super().step(closure)  # type: ignore[misc]
        self._loaded = None
        with torch.no_grad():
            for bucket in self._buckets:
                handle = self._backend.start_allgather(bucket.slice.detach().clone(),
                                                       f"hvdtrain.shard.param.{bucket.index}")
                bucket.flat.copy_(self._backend.wait(handle))
        self._synchronized = False
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        for tensor in [*self.model_parameters, *(b.slice for b in self._buckets)]:
            if set_to_none or tensor.grad is None:
                tensor.grad = None
            else:
                tensor.grad.zero_()
        self._synchronized = False

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        raise TypeError("a sharded optimizer's parameter groups are fixed when it is sharded: give every group "
                        "to the optimizer before shard_optimizer_state")

    # State: per parameter, as an unsharded optimizer holds it.

    def state_dict(self, keep: bool = True) -> dict[str, Any]:
        """Collective: the optimizer's state as an unsharded optimizer of the same class writes it.

        Each bucket's slices are allgathered in turn, so no replica holds more than one bucket beyond
        its own; ``keep=False`` takes part and returns the parameter groups only (a checkpoint's other
        replicas).
        """
        index = {id(p): i for i, p in enumerate(self.model_parameters)}
        state: dict[int, dict[str, Any]] = {}
        for bucket in self._buckets:
            own = self.state.get(bucket.slice, {})  # type: ignore[attr-defined]
            for key, value in sorted(own.items()):
                if torch.is_tensor(value) and value.shape == bucket.slice.shape:
                    handle = self._backend.start_allgather(value.detach().clone(),
                                                           f"hvdtrain.shard.state.{bucket.index}.{key}")
                    value = self._backend.wait(handle)
                    if keep:
                        for param, offset in bucket.offsets():
                            state.setdefault(index[id(param)], {})[key] = \
                                value[offset:offset + param.numel()].view_as(param).clone()
                elif keep:
                    for param in bucket.params:
                        state.setdefault(index[id(param)], {})[key] = value.clone() if torch.is_tensor(value) \
                            else value
        groups, first = [], 0
        for hyper, params in zip(hyperparameters(self.param_groups), self._group_params):  # type: ignore[attr-defined]
            groups.append({**hyper, "params": list(range(first, first + len(params)))})
            first += len(params)
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Take this replica's slices of a per-parameter state (any layout's checkpoint); no collective.

        Raises:
            ValueError: the state is for other parameter groups.
        """
        saved = state_dict["param_groups"]
        counts = [len(group["params"]) for group in saved]
        if counts != [len(params) for params in self._group_params]:
            raise ValueError(f"the saved optimizer state has parameter groups of {counts} parameters, but this "
                             f"optimizer's hold {[len(p) for p in self._group_params]}: load the state of the "
                             "same model and parameter groups")
        for group, hyper in zip(self.param_groups, hyperparameters(saved)):  # type: ignore[attr-defined]
            group.update(hyper)
        per_param = self._per_param(state_dict)
        self.state.clear()  # type: ignore[attr-defined]
        for bucket in self._buckets:
            states = [per_param[id(p)] for p in bucket.params]
            self._keep_own(bucket, _keys(bucket, states), lambda key, b=bucket, s=states: _flat_state(b, s, key))
        self._loaded = state_dict

    def broadcast_state(self, root: int) -> None:
        """Collective: every replica takes its slices of the state ``root`` loaded (one bucket at a time)
        and ``root``'s hyperparameters."""
        backend = self._backend
        loaded = backend.broadcast_object({"groups": hyperparameters(self.param_groups),  # type: ignore[attr-defined]
                                           "loaded": self._loaded is not None}, root)
        for group, hyper in zip(self.param_groups, loaded["groups"]):  # type: ignore[attr-defined]
            group.update(hyper)
        if loaded["loaded"]:
            self._broadcast_loaded(root)
        self._loaded = None

    def _broadcast_loaded(self, root: int) -> None:
        backend, is_root = self._backend, self._backend.rank == root
        per_param = self._per_param(self._loaded) if is_root else {}
        self.state.clear()  # type: ignore[attr-defined]
        for bucket in self._buckets:
            states = [per_param[id(p)] for p in bucket.params] if is_root else []
            keys = backend.broadcast_object(_keys(bucket, states) if is_root else None, root)

            def full(key: str, bucket: _Bucket = bucket, states: list[Any] = states) -> torch.Tensor:
                sent = _flat_state(bucket, states, key) if is_root else torch.empty_like(bucket.flat)
                return backend.broadcast_tensor(sent, root, f"hvdtrain.shard.load.{bucket.index}.{key}")
            self._keep_own(bucket, keys, full)

    def _per_param(self, state_dict: dict[str, Any]) -> dict[int, dict[str, Any] | None]:
        """Each model parameter's entry (by ``id``) in a per-parameter ``state_dict``, None if it has none."""
        return {id(p): state_dict["state"].get(saved_index)
                for params, group in zip(self._group_params, state_dict["param_groups"])
                for p, saved_index in zip(params, group["params"])}

    def _keep_own(self, bucket: _Bucket, keys: dict[str, tuple[bool, Any]], full: Any) -> None:
        """Keep this replica's slice of each per-element state (``full(key)``: the whole bucket's) and the
        scalars as they are, as the state of ``bucket``'s slice."""
        own: dict[str, Any] = {}
        for key, (shaped, scalar) in sorted(keys.items()):
            if shaped:
                own[key] = full(key)[bucket.start:bucket.start + bucket.size].clone()
            else:
                own[key] = scalar.clone() if torch.is_tensor(scalar) else scalar
        if own:
            self.state[bucket.slice] = own  # type: ignore[attr-defined]


def _keys(bucket: _Bucket, per_param: list[dict[str, Any] | None]) -> dict[str, tuple[bool, Any]]:
    """Each state key of the bucket's parameters: (per element?, the value when it is not)."""
    keys: dict[str, tuple[bool, Any]] = {}
    for param, state in zip(bucket.params, per_param):
        for key, value in (state or {}).items():
            shaped = torch.is_tensor(value) and value.shape == param.shape and (param.dim() > 0 or key != "step")
            keys.setdefault(key, (shaped, None if shaped else value))
    return keys


def _flat_state(bucket: _Bucket, per_param: list[dict[str, Any] | None], key: str) -> torch.Tensor:
    parts = []
    for param, state in zip(bucket.params, per_param):
        value = (state or {}).get(key)
        parts.append(torch.zeros(param.numel(), dtype=bucket.flat.dtype, device=bucket.flat.device) if value is None
                     else value.detach().to(bucket.flat.device, bucket.flat.dtype).reshape(-1))
    return torch.cat(parts)
