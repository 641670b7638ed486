"""Indexed access to one results JSON, and the facts about the run that the sentences quote."""
from __future__ import annotations

import itertools
import math
from typing import Any

from benchmarks import matrix
from benchmarks.matrix import Tuning
from benchmarks.report.text import NOISE_FLOOR, name, ratio

Record = dict[str, Any]
#: A Horovod default is worth changing only for a win of more than this many times the noise.
CLEAR_WIN = 2


class Results:
    """Indexed access to one results JSON.

    Attributes:
        data: the results document.
        throughput: ok or not, by (variant key, model, np).
        tuning: by tuning case key.
        allreduce: the successful allreduce sweeps, by implementation key.
    """

    def __init__(self, data: dict[str, Any]) -> None:
        self.data = data
        self.throughput = {(r["key"], r["model"], r["np"]): r for r in data.get("throughput", [])}
        self.tuning = {r["key"]: r for r in data.get("tuning", [])}
        self.allreduce = {r["key"]: r for r in data.get("allreduce", []) if r.get("status") == "ok"}

    @property
    def cores(self) -> int | None:
        """CPU cores of the machine the run measured, if recorded."""
        return self.data.get("machine", {}).get("cores")

    def sps(self, key: str, model: str, np: int) -> float | None:
        """Global samples/s of a throughput record, if it ran."""
        return _ok_rate(self.throughput.get((key, model, np)))

    def tuned(self, key: str) -> float | None:
        """Global samples/s of a tuning record, if it ran."""
        return _ok_rate(self.tuning.get(key))

    def rel(self, key: str, ref: str = Tuning.BASELINE) -> float | None:
        """Throughput of tuning case ``key`` relative to case ``ref``."""
        return ratio(self.tuned(key), self.tuned(ref))

    def swept(self, group: str) -> list[Record]:
        """The successful tuning records of one sweep group, in run order."""
        return [r for r in self.data.get("tuning", []) if r.get("group") == group and r.get("status") == "ok"]

    def case(self, key: str) -> Record:
        """Tuning record ``key`` over what the sweep defines for it (model, np, threads, reference)."""
        case = matrix.tuning_case(key)
        defined = {} if case is None else {"key": key, "model": case.model, "np": case.np,
                                           "threads": case.variant.threads, "reference": case.reference}
        return {**defined, **self.tuning.get(key, {})}

    def model_name(self, key: str) -> str:
        """Short name of the model tuning case ``key`` trains."""
        return name(self.case(key).get("model", "?"))

    def noise(self) -> float:
        """Relative difference between two measurements of the same configuration (at least NOISE_FLOOR).

        The tuning baselines are the raw Horovod MPI loop again, measured in another launch.
        """
        diffs = []
        for key in (Tuning.BASELINE, Tuning.CNN_BASELINE):
            case = self.case(key)
            a, b = self.tuned(key), self.sps(matrix.TORCH_HVD_MPI.key, case.get("model"), case.get("np"))
            if a and b:
                diffs.append(abs(a - b) / ((a + b) / 2))
        return max([NOISE_FLOOR, *diffs])

    def shared(self, section: str, field: str) -> Any:
        """The value of ``field`` that every record of ``section`` has, or None when they differ or lack it."""
        values = {r.get(field) for r in self.data.get(section, [])}
        return values.pop() if len(values) == 1 else None

    def cores_busy(self, np: int, threads: int) -> bool:
        """Whether ``np`` workers of ``threads`` intra-op threads each leave no core of the machine idle."""
        return bool(self.cores) and np * threads >= self.cores

    def allreduce_ms(self, key: str, nbytes: float) -> float | None:
        """Allreduce time of ``nbytes`` for one implementation, interpolated log-log."""
        rows = sorted(self.allreduce.get(key, {}).get("rows", []), key=lambda r: r["bytes"])
        return _interpolate(rows, nbytes) if rows else None


def _ok_rate(record: Record | None) -> float | None:
    return record.get("samples_per_sec") if record and record.get("status") == "ok" else None


def _interpolate(rows: list[Record], nbytes: float) -> float:
    """Median time at ``nbytes`` from rows sorted by size: log-log inside, linear in size past the end."""
    if nbytes <= rows[0]["bytes"]:
        return rows[0]["median_ms"]
    for lo, hi in itertools.pairwise(rows):
        if lo["bytes"] <= nbytes <= hi["bytes"]:
            frac = math.log(nbytes / lo["bytes"]) / math.log(hi["bytes"] / lo["bytes"])
            return math.exp(math.log(lo["median_ms"]) * (1 - frac) + math.log(hi["median_ms"]) * frac)
    last = rows[-1]
    return last["median_ms"] * nbytes / last["bytes"]
