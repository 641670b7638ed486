"""Rank-aware helpers: rank-zero-only work and decisions agreed by all ranks."""
from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

from hvdtrain.core.backend import Backend, any_rank

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


def agree_any(backend: Backend, wish: bool) -> bool:
    """Decide collectively: true everywhere if any rank wishes it.

    Use before acting on any choice that gates a collective (stop, save,
    skip), so no rank is left waiting in a collective the others skipped.
    """
    return any_rank(backend, wish)


def root_decides(backend: Backend, value: Any, root: int = 0) -> Any:
    """Return rank ``root``'s ``value`` on every rank."""
    return backend.broadcast_object(value, root=root)
