"""Rank-zero-only work, declared once on the hook."""
from __future__ import annotations

import functools
from collections.abc import Callable
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
