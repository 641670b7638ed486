"""Logging setup: informative on rank 0, warnings and errors only elsewhere."""
from __future__ import annotations

import logging
import sys

LOGGER_NAME = "hvdtrain"


def configure_logging(rank: int, level: int = logging.INFO) -> logging.Logger:
    """Configure the ``hvdtrain`` logger once per process; returns it."""
    logger = logging.getLogger(LOGGER_NAME)
    if not any(getattr(h, "_hvdtrain", False) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter(f"[hvdtrain rank {rank}] %(levelname)s %(message)s"))
        handler._hvdtrain = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
        logger.propagate = False
    logger.setLevel(level if rank == 0 else logging.WARNING)
    return logger
