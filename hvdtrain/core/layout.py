"""Layout: how the job's ranks divide into pipeline stages and data-parallel replicas.

The one answer to every size question. ``data_size`` is the number of model replicas (what data
sharding, gradient averaging, the linear LR scaling rule and metric averaging mean by "workers");
``pipeline`` is the number of stages each replica's model is split into. The world is their
product. Ranks are numbered stage-major, ``rank = stage * data_size + data_rank``, so that a
tensor-parallel dimension can later be added innermost without renumbering the other two; a
replica's consecutive stages are ``data_size`` ranks apart.
"""
from __future__ import annotations

from dataclasses import dataclass


class LayoutError(ValueError):
    """A layout that does not fit the job's world."""


@dataclass(frozen=True)
class Layout:
    """This rank's place in a ``pipeline`` x ``data_size`` world.

    Attributes:
        pipeline: stages per model replica (1: plain data parallelism).
        data_size: model replicas, each fed its own shard of the data.
        rank: this process's rank in the world.
    """

    pipeline: int = 1
    data_size: int = 1
    rank: int = 0

    def __post_init__(self) -> None:
        if self.pipeline < 1 or self.data_size < 1:
            raise LayoutError(f"pipeline stages and data replicas must be >= 1 (got pipeline={self.pipeline}, "
                              f"data_size={self.data_size})")
        if not 0 <= self.rank < self.world_size:
            raise LayoutError(f"rank {self.rank} is outside a world of {self.world_size} "
                              f"({self.pipeline} stages x {self.data_size} replicas)")

    @classmethod
    def for_world(cls, world_size: int, rank: int, pipeline: int = 1) -> Layout:
        """The layout of ``world_size`` ranks split into ``pipeline`` stages; the rest are replicas.

        Raises:
            LayoutError: ``world_size`` is not a multiple of ``pipeline``, naming the three numbers.
        """
        if pipeline < 1 or world_size % pipeline:
            raise LayoutError(f"{world_size} workers cannot form pipelines of {pipeline} stages: the workers must "
                              f"be pipeline stages x data replicas, and {world_size} is not a multiple of "
                              f"{pipeline}. Launch with -np {pipeline * max(1, world_size // max(pipeline, 1))} "
                              f"or choose a stage count that divides {world_size}.")
        return cls(pipeline, world_size // pipeline, rank)

    @property
    def world_size(self) -> int:
        return self.pipeline * self.data_size

    @property
    def stage(self) -> int:
        """This rank's pipeline stage (0 holds the model's first layers)."""
        return self.rank // self.data_size

    @property
    def data_rank(self) -> int:
        """This rank's model replica: which shard of the data it trains on."""
        return self.rank % self.data_size

    @property
    def is_first_stage(self) -> bool:
        return self.stage == 0

    @property
    def is_last_stage(self) -> bool:
        return self.stage == self.pipeline - 1

    def rank_of(self, stage: int, data_rank: int) -> int:
        return stage * self.data_size + data_rank

    @property
    def previous_stage_rank(self) -> int | None:
        """The rank this rank's activations come from (the same replica's previous stage), if any."""
        return None if self.is_first_stage else self.rank_of(self.stage - 1, self.data_rank)

    @property
    def next_stage_rank(self) -> int | None:
        """The rank this rank's activations go to, if any."""
        return None if self.is_last_stage else self.rank_of(self.stage + 1, self.data_rank)

    def data_group(self, stage: int | None = None) -> list[int]:
        """The ranks holding ``stage`` (default: this rank's), one per replica: they average its gradients."""
        stage = self.stage if stage is None else stage
        return [self.rank_of(stage, data_rank) for data_rank in range(self.data_size)]

    def data_groups(self) -> list[list[int]]:
        """Every stage's data-parallel group, in stage order."""
        return [self.data_group(stage) for stage in range(self.pipeline)]

    def describe(self) -> str:
        return f"{self.pipeline} pipeline stage{'s' * (self.pipeline != 1)} x {self.data_size} data replica" \
               f"{'s' * (self.data_size != 1)}"
