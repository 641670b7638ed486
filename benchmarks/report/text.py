"""Wording shared by every part of the report: model names, counts, numbers, sizes and changes."""
from __future__ import annotations

MODEL_TITLES = {"mlp": "MLP 784-2048-2048-10", "cnn": "CNN (2 conv + 2 fc) on 1x28x28",
                "tiny-mlp": "tiny MLP 784-64-64-10", "tiny-cnn": "tiny CNN (4/8 channels)"}
MODEL_NAMES = {"mlp": "MLP", "cnn": "CNN", "tiny-mlp": "tiny MLP", "tiny-cnn": "tiny CNN"}
#: Relative differences up to this are reported as no measurable change.
NOISE_FLOOR = 0.03
_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve")


def title(model: str) -> str:
    """The heading of a model: its architecture, e.g. "MLP 784-2048-2048-10"."""
    return MODEL_TITLES.get(model, model)


def name(model: str) -> str:
    """The short name of a model in running text, e.g. "MLP"."""
    return MODEL_NAMES.get(model, model)


def word(n: int) -> str:
    """A small count in words ("six"); larger ones in digits."""
    return _WORDS[n] if 0 <= n < len(_WORDS) else str(n)


def count(n: int, noun: str) -> str:
    """``n`` things in words, e.g. "two cores" or "one core"."""
    return f"{word(n)} {noun}" + ("" if n == 1 else "s")


def workers(n: int) -> str:
    """"2 workers", "1 worker"."""
    return f"{n} worker" + ("" if n == 1 else "s")


def ratio(a: float | None, b: float | None) -> float | None:
    """``a / b``, or None when either is missing or zero."""
    return a / b if a and b else None


def fmt(value: float | None, spec: str = ",.0f", suffix: str = "") -> str:
    """``value`` formatted with ``spec``, or "n/a"."""
    return "n/a" if value is None else f"{value:{spec}}{suffix}"


def pct(rel: float | None) -> str:
    """A relative change, e.g. +12% or -8%."""
    return "n/a" if rel is None else f"{(rel - 1) * 100:+.0f}%"


def ms(value: float | None) -> str:
    """Milliseconds with one decimal below 10, none above."""
    if value is None:
        return "n/a"
    return f"{value:.1f}" if value < 10 else f"{value:.0f}"


def mib(nbytes: float) -> str:
    """A byte count in MiB with a decimal, or KiB below 1 MiB."""
    return f"{nbytes / (1 << 20):.1f} MiB" if nbytes >= 1 << 20 else f"{nbytes / 1024:.0f} KiB"


def size(nbytes: int) -> str:
    """A message size that is a whole number of KiB or MiB."""
    return f"{nbytes >> 20} MiB" if nbytes >= 1 << 20 else f"{nbytes >> 10} KiB"


def change(rel: float | None, noise: float = NOISE_FLOOR) -> str:
    """``rel`` (new/old) in words: "12% slower", "5% faster" or "no measurable change"."""
    if rel is None:
        return "not measured"
    if abs(rel - 1) <= noise:
        return f"no measurable change ({pct(rel)})"
    return f"{abs(rel - 1) * 100:.0f}% {'faster' if rel > 1 else 'slower'}"
