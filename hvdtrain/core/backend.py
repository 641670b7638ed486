"""The collective operations the core needs, and a serial backend for one process."""
from __future__ import annotations

import contextlib
import pickle
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

from hvdtrain.core.layout import Layout


@runtime_checkable
class Backend(Protocol):
    """Collectives over the workers of one job.

    Framework adapters implement this on top of Horovod; ``SerialBackend`` is
    the world-size-1 fallback so the same code runs in a single process.
    Every method is a collective: all ranks must call it in the same order.
    """

    @property
    def rank(self) -> int: ...

    @property
    def size(self) -> int: ...

    @property
    def local_rank(self) -> int: ...

    @property
    def local_size(self) -> int: ...

    @property
    def layout(self) -> Layout:
        """How the ranks divide into pipeline stages and data-parallel replicas (every size question)."""

    @property
    def elastic(self) -> bool:
        """Whether workers may leave and join (then training runs through ``run_elastic``)."""

    def run_elastic(self, train: Callable[[], Any], state: Any) -> Any:
        """Run ``train()`` so that a lost or added worker rolls back to ``state``'s last commit and goes on."""

    def allreduce_sum(self, values: Sequence[float]) -> list[float]:
        """Element-wise sum of a float vector across ranks."""

    def allreduce_max(self, values: Sequence[float]) -> list[float]:
        """Element-wise maximum of a float vector across ranks."""

    def broadcast_object(self, obj: Any, root: int = 0) -> Any:
        """Return ``obj`` from ``root`` on every rank (pickled)."""

    def allgather_object(self, obj: Any) -> list[Any]:
        """Return the list of every rank's ``obj``, indexed by rank."""

    def barrier(self) -> None:
        """Block until every rank has reached this point."""

    def watch(self, what: str) -> contextlib.AbstractContextManager:
        """Context for a wait on the other ranks (``what`` names it), ended with a message if it never returns."""


class SerialBackend:
    """A backend for a single process: every collective is the identity."""

    rank = 0
    size = 1
    local_rank = 0
    local_size = 1
    elastic = False

    @property
    def layout(self) -> Layout:
        return Layout.data_parallel(self.size, self.rank)

    def run_elastic(self, train: Callable[[], Any], state: Any) -> Any:
        return train()

    def allreduce_sum(self, values: Sequence[float]) -> list[float]:
        return [float(v) for v in values]

    def allreduce_max(self, values: Sequence[float]) -> list[float]:
        return [float(v) for v in values]

    def broadcast_object(self, obj: Any, root: int = 0) -> Any:
        # Round-trip through pickle so callers see the same copy semantics as in a real job.
        return pickle.loads(pickle.dumps(obj))

    def allgather_object(self, obj: Any) -> list[Any]:
        return [obj]

    def barrier(self) -> None:
        return None

    def watch(self, what: str) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()


def allreduce_mean(backend: Backend, values: Mapping[str, float],
                   weight: float = 1.0) -> dict[str, float]:
    """Weighted mean of named scalars across ranks, in one collective.

    Args:
        backend: the job's backend.
        values: this rank's scalars; every rank must pass the same keys.
        weight: this rank's weight (e.g. its number of samples).

    Returns:
        The same keys, each the weighted mean over ranks.
    """
    keys = sorted(values)
    sums = backend.allreduce_sum([float(values[k]) * weight for k in keys] + [weight])
    total = sums[-1] or 1.0
    return {k: s / total for k, s in zip(keys, sums[:-1])}


def any_rank(backend: Backend, flag: bool) -> bool:
    """True on every rank if ``flag`` is true on at least one rank."""
    return backend.allreduce_max([1.0 if flag else 0.0])[0] > 0.0
