"""Layout: how the job's ranks divide into pipeline stages, data-parallel replicas and tensor slices.

The one answer to every size question. ``data_size`` is the number of model replicas (what data
sharding, gradient averaging, the linear LR scaling rule and metric averaging mean by "workers");
``pipeline`` is the number of stages each replica's model is split into, and ``tensor`` the number
of ranks each stage's layers are split across (Megatron-style tensor parallelism). The world is their
product. Ranks are numbered stage-major and tensor-innermost,
``rank = (stage * data_size + data_rank) * tensor + tensor_rank``, so the ranks that split a layer
(and talk every layer) are neighbours, on one node where possible. A rank's model part is its stage's
slice ``part = stage * tensor + tensor_rank``: what its checkpoint file holds.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass


class LayoutError(ValueError):
    """A layout that does not fit the job's world."""


@dataclass(frozen=True)
class Layout:
    """This rank's place in a ``pipeline`` x ``data_size`` x ``tensor`` world.

    Attributes:
        pipeline: stages per model replica (1: no pipeline).
        data_size: model replicas, each fed its own shard of the data.
        rank: this process's rank in the world.
        tensor: ranks each stage's layers are split across (1: no tensor parallelism).
    """

    pipeline: int = 1
    data_size: int = 1
    rank: int = 0
    tensor: int = 1

    def __post_init__(self) -> None:
        if self.pipeline < 1 or self.data_size < 1 or self.tensor < 1:
            raise LayoutError(f"pipeline stages, data replicas and tensor slices must be >= 1 (got "
                              f"pipeline={self.pipeline}, data_size={self.data_size}, tensor={self.tensor})")
        if not 0 <= self.rank < self.world_size:
            raise LayoutError(f"rank {self.rank} is outside a world of {self.world_size} ({self.describe()})")

    @staticmethod
    @functools.lru_cache(maxsize=64)
    def data_parallel(world_size: int, rank: int) -> Layout:
        """The layout where every rank is a model replica (one shared, immutable object per world and rank:
        the training step asks for it often)."""
        return Layout(1, world_size, rank)

    @classmethod
    def for_world(cls, world_size: int, rank: int, pipeline: int = 1, tensor: int = 1) -> Layout:
        """The layout of ``world_size`` ranks split into ``pipeline`` stages of ``tensor`` slices; the rest are
        replicas.

        Raises:
            LayoutError: ``world_size`` is not a multiple of ``pipeline * tensor``, naming the numbers.
        """
        per_replica = pipeline * tensor
        if pipeline < 1 or tensor < 1 or world_size % per_replica:
            parts = " x ".join(f"{n} {what}" for n, what in ((pipeline, "pipeline stages"), (tensor, "tensor slices"))
                               if n != 1) or "1 part"
            raise LayoutError(f"{world_size} workers cannot form model replicas of {parts}: the workers must be "
                              f"{parts} x data replicas, and {world_size} is not a multiple of {per_replica}. "
                              f"Launch with -np {per_replica * max(1, world_size // max(per_replica, 1))} or "
                              f"choose sizes whose product divides {world_size}.")
        return cls(pipeline, world_size // per_replica, rank, tensor)

    @property
    def world_size(self) -> int:
        return self.pipeline * self.data_size * self.tensor

    @property
    def stage(self) -> int:
        """This rank's pipeline stage (0 holds the model's first layers)."""
        return self.rank // (self.data_size * self.tensor)

    @property
    def data_rank(self) -> int:
        """This rank's model replica: which shard of the data it trains on."""
        return self.rank // self.tensor % self.data_size

    @property
    def tensor_rank(self) -> int:
        """Which slice of its stage's split layers this rank holds."""
        return self.rank % self.tensor

    @property
    def part(self) -> int:
        """This rank's model part (its stage's ``tensor_rank``-th slice): what its checkpoint file holds."""
        return self.stage * self.tensor + self.tensor_rank

    @property
    def parts(self) -> int:
        return self.pipeline * self.tensor

    @property
    def is_first_stage(self) -> bool:
        return self.stage == 0

    @property
    def is_last_stage(self) -> bool:
        return self.stage == self.pipeline - 1

    def rank_of(self, stage: int, data_rank: int, tensor_rank: int | None = None) -> int:
        """The rank of ``stage``'s replica ``data_rank``, slice ``tensor_rank`` (default: this rank's)."""
        tensor_rank = self.tensor_rank if tensor_rank is None else tensor_rank
        return (stage * self.data_size + data_rank) * self.tensor + tensor_rank

    @property
    def previous_stage_rank(self) -> int | None:
        """The rank this rank's activations come from (the same replica's previous stage), if any."""
        return None if self.is_first_stage else self.rank_of(self.stage - 1, self.data_rank)

    @property
    def next_stage_rank(self) -> int | None:
        """The rank this rank's activations go to, if any."""
        return None if self.is_last_stage else self.rank_of(self.stage + 1, self.data_rank)

    def data_group(self, stage: int | None = None) -> list[int]:
        """The ranks holding this rank's part of ``stage`` (default: its own), one per replica: they average
        its gradients."""
        stage = self.stage if stage is None else stage
        return [self.rank_of(stage, data_rank) for data_rank in range(self.data_size)]

    def data_groups(self) -> list[list[int]]:
        """Every model part's data-parallel group, in part order."""
        return [[self.rank_of(stage, data_rank, tensor_rank) for data_rank in range(self.data_size)]
                for stage in range(self.pipeline) for tensor_rank in range(self.tensor)]

    def tensor_group(self) -> list[int]:
        """The ranks that split this rank's stage's layers with it (its replica's), in tensor-rank order."""
        return [self.rank_of(self.stage, self.data_rank, t) for t in range(self.tensor)]

    def tensor_groups(self) -> list[list[int]]:
        """Every replica's tensor group of every stage."""
        return [[self.rank_of(stage, data_rank, t) for t in range(self.tensor)]
                for stage in range(self.pipeline) for data_rank in range(self.data_size)]

    def describe(self) -> str:
        text = f"{self.pipeline} pipeline stage{'s' * (self.pipeline != 1)} x {self.data_size} data replica" \
               f"{'s' * (self.data_size != 1)}"
        return text + (f" x {self.tensor} tensor slices" if self.tensor != 1 else "")
