"""Shared monitor/mode logic for callbacks that track the best value of a metric."""
from __future__ import annotations

import math
from typing import Any


class Monitor:
    """Tracks the best value of one metric.

    Args:
        metric: key in ``ctx.logs`` (e.g. ``"val_loss"``).
        mode: ``"min"``, ``"max"`` or ``"auto"`` (max for names containing acc/auc/f1, else min).
        min_delta: smallest change that counts as an improvement.
    """

    def __init__(self, metric: str, mode: str = "auto", min_delta: float = 0.0) -> None:
        if mode not in ("min", "max", "auto"):
            raise ValueError(f"mode must be 'min', 'max' or 'auto' (got {mode!r})")
        if mode == "auto":
            mode = "max" if any(t in metric for t in ("acc", "auc", "f1", "precision", "recall")) else "min"
        self.metric = metric
        self.mode = mode
        self.min_delta = abs(min_delta)
        self.best: float | None = None

    def read(self, logs: dict[str, Any]) -> float:
        """The monitored value from ``logs``.

        Raises:
            KeyError: the metric is not logged; the message lists what is.
        """
        if self.metric not in logs:
            raise KeyError(f"monitored metric {self.metric!r} is not in the logs; available: "
                           f"{', '.join(sorted(logs)) or 'none'}. Pass one of those as monitor=")
        return float(logs[self.metric])

    def improves(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        if self.best is None:
            return True
        if self.mode == "min":
            return value < self.best - self.min_delta
        return value > self.best + self.min_delta

    def update(self, value: float) -> bool:
        """Record ``value``; returns True if it is a new best."""
        if self.improves(value):
            self.best = value
            return True
        return False
