"""Seconds read from an environment variable, the way every hvdtrain timeout is read."""
from __future__ import annotations

import math
import os
from collections.abc import Mapping


def seconds_from_env(name: str, default: float, example: str, environ: Mapping[str, str] | None = None,
                     zero: str | None = None) -> float:
    """``name``'s value in seconds, ``default`` when unset or empty.

    Args:
        example: a value to suggest in the error, e.g. "600".
        zero: what 0 means ("turns the watchdog off"); None: 0 is refused.

    Raises:
        ValueError: not a finite number, negative, or 0 where 0 means nothing; the message names the
            variable and a value to set.
    """
    value = (os.environ if environ is None else environ).get(name, "").strip()
    if not value:
        return default
    hint = f"set it to e.g. {example}" + (f", or 0, which {zero}" if zero else "")
    try:
        seconds = float(value)
    except ValueError:
        raise ValueError(f"{name}={value!r} is not a number of seconds; {hint}") from None
    if not math.isfinite(seconds) or seconds < 0 or (seconds == 0 and zero is None):
        raise ValueError(f"{name}={value!r} must be a number of seconds above 0; {hint}")
    return seconds
