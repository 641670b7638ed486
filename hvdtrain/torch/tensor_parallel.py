"""Tensor-parallel layers (Megatron-style): one layer's weight split across the ranks of a tensor group.

A ``ColumnParallelLinear`` holds a slice of the output features and a ``RowParallelLinear`` a slice
of the input features, so the pair ``column -> activation -> row`` needs one allreduce forward and
one backward, and no rank ever holds the whole weight::

    group = TensorGroup.world()                    # every rank of the job splits the layers
    hidden = ColumnParallelLinear.from_dense(nn.Linear(512, 2048), group)
    out = RowParallelLinear.from_dense(nn.Linear(2048, 512), group)
    y = out(torch.relu(hidden(x)))                 # x and y are whole, and equal on every rank

The communication is written as ``autograd.Function``s with Megatron's conjugate pairs ("f": identity
forward, allreduce backward; "g": allreduce forward, identity backward; and gather and scatter along
the last dimension), on Horovod collectives within the group's process set. Horovod's own autograd
for its collectives is data-parallel style (the gradient of an allreduce is another allreduce), which
is wrong here. Every rank of the group must run the same layers in the same order with inputs of the
same shape: each collective is named from the group's counter.
"""
from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import horovod.torch as hvd
import torch
from torch import nn
from torch.nn import functional


class TensorGroup:
    """The ranks that split a layer: their Horovod process set, and this rank's place in it.

    Args:
        process_set: Horovod's process set of the group (``hvd.global_process_set`` for the world).
        ranks: the group's world ranks, in tensor-rank order.
    """

    def __init__(self, process_set: Any, ranks: list[int]) -> None:
        if hvd.rank() not in ranks:
            raise ValueError(f"rank {hvd.rank()} is not in the tensor group {ranks}")
        self.process_set, self.ranks = process_set, list(ranks)
        self.rank, self.size = self.ranks.index(hvd.rank()), len(self.ranks)
        self._calls = itertools.count()

    @classmethod
    def world(cls) -> TensorGroup:
        """Every rank of the job in one group."""
        return cls(hvd.global_process_set, list(range(hvd.size())))

    @classmethod
    def of(cls, backend: Any) -> TensorGroup:
        """This rank's tensor group in the layout of ``hvdtrain.torch.init(tensor=T)`` (its replica's T ranks)."""
        layout = backend.layout
        if layout.tensor == 1:
            raise ValueError("this job has no tensor groups: initialize with hvdtrain.torch.init(tensor=T) and "
                             "launch a multiple of T workers")
        return cls(backend.tensor_process_set, layout.tensor_group())

    def name(self, kind: str) -> str:
        return f"hvdtrain.tensor.{self.ranks[0]}.{kind}.{next(self._calls)}"

    def part(self, total: int, what: str) -> slice:
        """This rank's slice of ``total`` features; ``what`` names them in the error."""
        if total % self.size:
            raise ValueError(f"{what} is {total}, which {self.size} tensor-parallel ranks cannot split evenly: "
                             f"make it a multiple of {self.size}, or use {self._divisors(total)} ranks")
        width = total // self.size
        return slice(self.rank * width, (self.rank + 1) * width)

    @staticmethod
    def _divisors(total: int) -> str:
        return " or ".join(str(n) for n in range(2, min(total, 16) + 1) if total % n == 0) or "1"

    def allreduce(self, tensor: torch.Tensor, op: Any = hvd.Sum) -> torch.Tensor:
        if self.size == 1:
            return tensor
        return hvd.allreduce(tensor.contiguous(), name=self.name("allreduce"), op=op, process_set=self.process_set)

    def gather_last(self, tensor: torch.Tensor) -> torch.Tensor:
        """Every rank's ``tensor`` concatenated along the last dimension, in tensor-rank order."""
        if self.size == 1:
            return tensor
        front = tensor.movedim(-1, 0).contiguous()
        gathered = hvd.allgather(front, name=self.name("allgather"), process_set=self.process_set)
        return gathered.movedim(0, -1).contiguous()

    def own_last(self, tensor: torch.Tensor) -> torch.Tensor:
        """This rank's slice of ``tensor``'s last dimension."""
        return tensor[..., self.part(tensor.shape[-1], "the last dimension")].contiguous()


class _GroupOperator(torch.autograd.Function):
    """``forward(group, tensor)`` forward and ``backward(group, grad)`` backward: a conjugate pair."""

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor, group: TensorGroup, forward: Callable, backward: Callable
                ) -> torch.Tensor:
        ctx.group, ctx.backward = group, backward
        return forward(group, tensor)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None, None]:
        return ctx.backward(ctx.group, grad), None, None, None


def _unchanged(_group: TensorGroup, tensor: torch.Tensor) -> torch.Tensor:
    return tensor


def copy_to_group(tensor: torch.Tensor, group: TensorGroup) -> torch.Tensor:
    """"f": the input enters the group whole; the gradients of the ranks' parts are summed."""
    return _GroupOperator.apply(tensor, group, _unchanged, TensorGroup.allreduce)


def reduce_from_group(tensor: torch.Tensor, group: TensorGroup) -> torch.Tensor:
    """"g": the ranks' partial results are summed; the gradient goes back to each unchanged."""
    return _GroupOperator.apply(tensor, group, TensorGroup.allreduce, _unchanged)


def gather_from_group(tensor: torch.Tensor, group: TensorGroup) -> torch.Tensor:
    """The ranks' slices of the last dimension joined; each gets its slice of the gradient back."""
    return _GroupOperator.apply(tensor, group, TensorGroup.gather_last, TensorGroup.own_last)


def scatter_to_group(tensor: torch.Tensor, group: TensorGroup) -> torch.Tensor:
    """Each rank keeps its slice of the last dimension; the gradient slices are joined."""
    return _GroupOperator.apply(tensor, group, TensorGroup.own_last, TensorGroup.gather_last)


def _shard(tensor: torch.Tensor | None, part: slice, dim: int) -> nn.Parameter | None:
    if tensor is None:
        return None
    param = nn.Parameter(tensor.detach().narrow(dim, part.start, part.stop - part.start).clone())
    param.tensor_parallel_dim = dim  # a slice: its gradient norm is summed over the group, not counted once
    return param


def is_tensor_parallel(param: torch.Tensor) -> bool:
    """Whether ``param`` is one rank's slice of a split layer's weight (else every rank of the group holds
    it whole)."""
    return hasattr(param, "tensor_parallel_dim")


class ColumnParallelLinear(nn.Module):
    """``nn.Linear(in_features, out_features)`` whose output features are split across ``group``.

    Args:
        gather_output: return the whole output on every rank (else each rank's slice, for a
            ``RowParallelLinear`` with ``input_is_parallel=True`` next).
        dense: the full layer to take the weights from; by default one is built with the current
            RNG, so every rank (seeded alike) starts equal to the dense twin.
    """

    def __init__(self, in_features: int, out_features: int, group: TensorGroup, bias: bool = True,
                 gather_output: bool = False, dense: nn.Linear | None = None) -> None:
        super().__init__()
        dense = dense if dense is not None else nn.Linear(in_features, out_features, bias=bias)
        self.group, self.gather_output = group, gather_output
        self.in_features, self.out_features = in_features, out_features
        self.part = group.part(out_features, "ColumnParallelLinear's out_features")
        self.weight = _shard(dense.weight, self.part, 0)
        self.bias = _shard(dense.bias, self.part, 0)

    @classmethod
    def from_dense(cls, dense: nn.Linear, group: TensorGroup, gather_output: bool = False) -> ColumnParallelLinear:
        return cls(dense.in_features, dense.out_features, group, dense.bias is not None, gather_output, dense)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        output = functional.linear(copy_to_group(inputs, self.group), self.weight, self.bias)
        return gather_from_group(output, self.group) if self.gather_output else output

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features} "
                f"(this rank: {self.part.start}..{self.part.stop}), tensor ranks={self.group.size}")


class RowParallelLinear(nn.Module):
    """``nn.Linear(in_features, out_features)`` whose input features are split across ``group``.

    Args:
        input_is_parallel: the input is already this rank's slice (a ``ColumnParallelLinear``'s
            output); else the whole input is given and each rank takes its slice.
        dense: the full layer to take the weights from (see ``ColumnParallelLinear``).
    """

    def __init__(self, in_features: int, out_features: int, group: TensorGroup, bias: bool = True,
                 input_is_parallel: bool = True, dense: nn.Linear | None = None) -> None:
        super().__init__()
        dense = dense if dense is not None else nn.Linear(in_features, out_features, bias=bias)
        self.group, self.input_is_parallel = group, input_is_parallel
        self.in_features, self.out_features = in_features, out_features
        self.part = group.part(in_features, "RowParallelLinear's in_features")
        self.weight = _shard(dense.weight, self.part, 1)
        # Added once, after the sum: every rank holds it whole (a replicated parameter).
        self.bias = None if dense.bias is None else nn.Parameter(dense.bias.detach().clone())

    @classmethod
    def from_dense(cls, dense: nn.Linear, group: TensorGroup, input_is_parallel: bool = True) -> RowParallelLinear:
        return cls(dense.in_features, dense.out_features, group, dense.bias is not None, input_is_parallel, dense)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        if not self.input_is_parallel:
            inputs = scatter_to_group(inputs, self.group)
        output = reduce_from_group(functional.linear(inputs, self.weight), self.group)
        return output if self.bias is None else output + self.bias

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features} (this rank: {self.part.start}..{self.part.stop}), "
                f"out_features={self.out_features}, tensor ranks={self.group.size}")


class VocabParallelEmbedding(nn.Module):
    """``nn.Embedding(num_embeddings, embedding_dim)`` whose rows (the vocabulary) are split across ``group``.

    Each rank looks up the ids in its rows, zeros the others, and the ranks' results are summed.
    """

    def __init__(self, num_embeddings: int, embedding_dim: int, group: TensorGroup,
                 dense: nn.Embedding | None = None) -> None:
        super().__init__()
        dense = dense if dense is not None else nn.Embedding(num_embeddings, embedding_dim)
        self.group, self.num_embeddings, self.embedding_dim = group, num_embeddings, embedding_dim
        self.part = group.part(num_embeddings, "VocabParallelEmbedding's num_embeddings")
        self.weight = _shard(dense.weight, self.part, 0)

    @classmethod
    def from_dense(cls, dense: nn.Embedding, group: TensorGroup) -> VocabParallelEmbedding:
        return cls(dense.num_embeddings, dense.embedding_dim, group, dense)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        outside = (ids < self.part.start) | (ids >= self.part.stop)
        local = (ids - self.part.start).masked_fill(outside, 0)
        rows = functional.embedding(local, self.weight).masked_fill(outside.unsqueeze(-1), 0.0)
        return reduce_from_group(rows, self.group)


class _VocabParallelCrossEntropy(torch.autograd.Function):
    """Cross entropy of logits whose last dimension (the vocabulary) is split across the group."""

    @staticmethod
    def forward(ctx: Any, logits: torch.Tensor, target: torch.Tensor, group: TensorGroup) -> torch.Tensor:
        part = group.part(logits.shape[-1] * group.size, "the vocabulary")
        shifted = logits - group.allreduce(logits.max(dim=-1).values, op=hvd.Max).unsqueeze(-1)
        exp = shifted.exp()
        total = group.allreduce(exp.sum(dim=-1))
        outside = (target < part.start) | (target >= part.stop)
        local = (target - part.start).masked_fill(outside, 0)
        picked = shifted.gather(-1, local.unsqueeze(-1)).squeeze(-1).masked_fill(outside, 0.0)
        loss = total.log() - group.allreduce(picked)
        ctx.save_for_backward(exp / total.unsqueeze(-1), local, outside)
        return loss

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        softmax, local, outside = ctx.saved_tensors
        grad_logits = softmax.clone()
        inside = (~outside).to(softmax.dtype)
        grad_logits.scatter_add_(-1, local.unsqueeze(-1), -inside.unsqueeze(-1))
        return grad_logits * grad.unsqueeze(-1), None, None


def vocab_parallel_cross_entropy(logits: torch.Tensor, target: torch.Tensor, group: TensorGroup) -> torch.Tensor:
    """Per-sample cross entropy of ``logits`` (this rank's slice of the vocabulary, the last dimension)
    against ``target`` (whole vocabulary ids): equal to ``F.cross_entropy(whole_logits, target,
    reduction="none")``, without gathering the logits."""
    return _VocabParallelCrossEntropy.apply(logits, target, group)
