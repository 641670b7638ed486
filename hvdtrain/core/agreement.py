"""Ranks agree on what they are about to broadcast, before they broadcast it.

A broadcast between ranks whose models differ either hangs (collectives named after tensors no
other rank has) or silently garbles the model. One cheap ``allgather_object`` of every rank's
(name, shape, dtype) list, compared the same way on every rank, turns that into the same clear
error everywhere, naming the first tensor that differs.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from hvdtrain.core.backend import Backend

TensorSpec = tuple[str, tuple[int, ...], str]


class StateMismatchError(RuntimeError):
    """Ranks hold different tensors (count, names, shapes or dtypes) where they must hold the same."""


def check_ranks_agree(backend: Backend, specs: Sequence[TensorSpec], what: str = "model",
                      match_names: bool = True) -> None:
    """Collective: raise on every rank unless every rank passed the same ``specs`` (in a pipeline: every
    replica of each stage, as the stages hold different layers).

    Args:
        backend: the job's backend; with one worker nothing is checked.
        specs: (name, shape, dtype) of each tensor this rank will broadcast, in broadcast order.
        what: what the tensors are, for the message ("model", "model and optimizer").
        match_names: names must agree too (they do when the broadcast matches tensors by name, as
            Horovod's PyTorch ``broadcast_parameters`` does); otherwise only position, shape and dtype.

    Raises:
        StateMismatchError: the first tensor that differs, with its name and shape on both ranks.
    """
    if backend.size == 1:
        return
    mine = [(str(name), tuple(int(d) for d in shape), str(dtype)) for name, shape, dtype in specs]
    per_rank = backend.allgather_object(mine)
    for group in backend.layout.data_groups():
        problem = first_difference([per_rank[rank] for rank in group], what, match_names, ranks=group)
        if problem:
            raise StateMismatchError(problem)


def first_difference(per_rank: Sequence[Sequence[TensorSpec]], what: str = "model",
                     match_names: bool = True, ranks: Sequence[int] | None = None) -> str | None:
    """The message for the first tensor where a rank differs from the first, or None when all agree.

    ``ranks``: the world rank of each entry of ``per_rank`` (default: 0, 1, ...).
    """
    ranks = list(range(len(per_rank))) if ranks is None else list(ranks)
    reference = [tuple(spec) for spec in per_rank[0]]
    for rank, specs in zip(ranks[1:], per_rank[1:]):
        specs = [tuple(spec) for spec in specs]
        for index in range(max(len(reference), len(specs))):
            ours = reference[index] if index < len(reference) else None
            theirs = specs[index] if index < len(specs) else None
            if not _same(ours, theirs, match_names):
                return _message(what, index, ours, theirs, (ranks[0], rank), len(reference), len(specs))
    return None


def _same(a: Any, b: Any, match_names: bool) -> bool:
    if a is None or b is None:
        return False
    return a[1:] == b[1:] and (not match_names or a[0] == b[0])


def _describe(spec: Any, rank: int) -> str:
    if spec is None:
        return f"missing on rank {rank}"
    name, shape, dtype = spec
    return f"{name!r} with shape {shape} ({dtype}) on rank {rank}"


def _message(what: str, index: int, ours: Any, theirs: Any, ranks: tuple[int, int], count0: int,
             count: int) -> str:
    first, rank = ranks
    counts = f" Rank {first} has {count0} tensors and rank {rank} has {count}." if count0 != count else ""
    return (f"ranks disagree on the {what} before the initial broadcast: tensor #{index} is "
            f"{_describe(ours, first)} but {_describe(theirs, rank)}.{counts} Every rank must build the same "
            f"{what} (same layers, sizes, dtypes and order) before training starts; look for code that "
            "depends on the rank, on local files or on the host.")
