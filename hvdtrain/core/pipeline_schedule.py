"""The order in which a pipeline stage runs its micro-batches' forward and backward passes.

GPipe runs every forward, then every backward: a stage holds the saved activations of all M
micro-batches at once. 1F1B (PipeDream-Flush) runs ``min(P - stage - 1, M)`` forwards to fill the
pipeline, then alternates one forward and one backward, then drains: a stage never holds more than
``P - stage`` micro-batches, whatever M is. Both give the same gradients. Framework-neutral: the
framework's pipeline runs the actions this module lists.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

SCHEDULES = ("1f1b", "gpipe")

FORWARD, BACKWARD = "forward", "backward"


@dataclass(frozen=True)
class Action:
    """One pass of one micro-batch on one stage."""

    kind: Literal["forward", "backward"]
    micro_batch: int


def stage_actions(schedule: str, stage: int, stages: int, micro_batches: int) -> list[Action]:
    """The passes ``stage`` of ``stages`` runs for one batch of ``micro_batches``, in order.

    Raises:
        ValueError: an unknown schedule or a bad count.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES} (got {schedule!r})")
    if micro_batches < 1 or not 0 <= stage < stages:
        raise ValueError(f"need micro_batches >= 1 and 0 <= stage < stages (got {micro_batches}, {stage}, {stages})")
    forwards = [Action(FORWARD, m) for m in range(micro_batches)]
    backwards = [Action(BACKWARD, m) for m in range(micro_batches)]
    if schedule == "gpipe":
        return forwards + backwards
    warmup = min(stages - stage - 1, micro_batches)
    steady = [action for pair in zip(forwards[warmup:], backwards) for action in pair]
    return forwards[:warmup] + steady + backwards[micro_batches - warmup:]


def peak_saved(actions: list[Action]) -> int:
    """The most micro-batches whose activations a stage holds at once under ``actions``."""
    live = peak = 0
    for action in actions:
        live += 1 if action.kind == FORWARD else -1
        peak = max(peak, live)
    return peak
