"""Rank-zero-only work, declared once on the hook; and where a worker sits on its machine."""
from __future__ import annotations

import functools
import os
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])


def rank_zero_only(func: F) -> F:
    """Run a callback hook only on rank 0.

    The decorated function must take the ``TrainContext`` as its first
    argument after ``self`` (the signature of every callback hook). On other
    ranks it returns None without running. It must not call collectives.
    """

    @functools.wraps(func)
    def wrapper(self: Any, ctx: Any, *args: Any, **kwargs: Any) -> Any:
        if ctx.is_root:
            return func(self, ctx, *args, **kwargs)
        return None

    return wrapper  # type: ignore[return-value]


LOCAL_SLOT_HOSTS = "HVDTRAIN_LOCAL_SLOT_HOSTS"


def local_slot(local_rank: int, local_size: int, environ: Mapping[str, str] | None = None) -> tuple[int, int]:
    """This worker's (index, count) among the workers of its machine: its GPU and its share of the cores.

    ``hvdtrain run --elastic`` on one machine names each slot as its own host (so a lost worker
    costs only its slot), which makes every worker's Horovod local rank 0. It then exports the slot
    names in order as ``HVDTRAIN_LOCAL_SLOT_HOSTS``; a worker's position there (by its
    ``HOROVOD_HOSTNAME``) is its local index. Otherwise Horovod's local rank and size are right.
    """
    environ = os.environ if environ is None else environ
    slots = [name for name in environ.get(LOCAL_SLOT_HOSTS, "").split(",") if name]
    host = environ.get("HOROVOD_HOSTNAME")
    if host in slots:
        return slots.index(host), len(slots)
    return local_rank, local_size
