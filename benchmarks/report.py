"""Tables and a plot from a results JSON: docs/performance-results.md and docs/performance.png.

Only numbers: the reading of them (why a goal is missed, which defaults to keep) is written by a
person in docs/performance.md. The goals are data, in benchmarks/goals.yaml.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from benchmarks import matrix

GOALS_FILE = Path(__file__).with_name("goals.yaml")
Record = dict[str, Any]


@dataclass(frozen=True)
class Goal:
    """``variant`` must reach ``threshold`` times ``reference``'s throughput (same model and workers)."""

    goal: str
    variant: str
    reference: str
    threshold: float


def load_goals(path: Path = GOALS_FILE) -> list[Goal]:
    return [Goal(**entry) for entry in yaml.safe_load(path.read_text()) or []]


class Results:
    """One results document, indexed."""

    def __init__(self, data: dict[str, Any]) -> None:
        self.data = data
        self.throughput = {(r["key"], r["model"], r["np"]): r for r in data.get("throughput", [])}

    def sps(self, key: str, model: str, np: int) -> float | None:
        record = self.throughput.get((key, model, np))
        return record["samples_per_sec"] if record and record.get("status") == "ok" else None


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a and b else None


def cell(value: float | None, spec: str, suffix: str = "") -> str:
    return "n/a" if value is None else f"{value:{spec}}{suffix}"


def render(data: dict[str, Any], goals: list[Goal], png_name: str) -> str:
    """The whole results document as markdown."""
    res, models, nps = Results(data), data["models"], data["nps"]
    lines = ["# Benchmark results", "", "Written by `make bench` from its results JSON; what they mean is in "
             "[performance.md](performance.md).", "", f"Command: `{data['command']}`"
             + (" (quick mode: tiny models, few steps; not meaningful)" if data.get("quick") else ""), "",
             *_machine(data), "", f"![throughput and allreduce bandwidth]({png_name})", ""]
    if max(nps) >= 2:
        lines += goals_table(res, goals, models, max(nps))
    lines += ["## Throughput", "", "Samples/s of all workers; ratios against PyTorch DDP, the raw Horovod loop "
              "(the raw Keras loop for Keras rows) and the no-communication ceiling, same model and workers. "
              "† marks a figure disturbed by other load on the machine.", ""]
    for model in models:
        lines += throughput_table(res, model, nps)
    lines += phases_table(res, models, max(nps)) + allreduce_table(data) + tuning_table(data)
    lines += commands_table(data, max(nps))
    return "\n".join(lines)


def _machine(data: dict[str, Any]) -> list[str]:
    m = data.get("machine", {})
    gpus = ", ".join(m.get("gpus") or []) or "no GPU"
    software = ", ".join(f"{name} {m[key]}" for name, key in (("Python", "python"), ("PyTorch", "torch"),
                         ("TensorFlow", "tensorflow"), ("Keras", "keras"), ("Horovod", "horovod"),
                         ("MPI", "open_mpi"), ("mpi4py", "mpi4py"), ("Lightning", "lightning"),
                         ("Accelerate", "accelerate")) if m.get(key))
    return [f"- Machine: {m.get('cpu', '?')}, {m.get('cores', '?')} cores, {m.get('memory_gib', '?')} GiB, {gpus}",
            f"- Software: {software}",
            f"- Run: started {data.get('started', '?')}, {data.get('duration_s', 0) / 60:.1f} minutes; workers "
            f"{', '.join(map(str, data['nps']))}; {data.get('samples_per_rank', '?')} samples per worker"]


def goals_table(res: Results, goals: list[Goal], models: list[str], np: int) -> list[str]:
    lines = ["## Goals", "", f"At {np} workers; each cell is variant / reference.", "",
             "| goal | threshold | " + " | ".join(models) + " |", "|---|---:|" + "---:|" * len(models)]
    for goal in goals:
        cells = []
        for model in models:
            value = ratio(res.sps(goal.variant, model, np), res.sps(goal.reference, model, np))
            cells.append("n/a" if value is None else
                         f"{value:.2f} ({'met' if value >= goal.threshold else 'not met'})")
        lines.append(f"| {goal.goal} | {goal.threshold:g} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def throughput_table(res: Results, model: str, nps: list[int]) -> list[str]:
    lines = [f"### {model}", "", "| workers | variant | samples/s | × DDP | × raw Horovod | % of ceiling | step ms |",
             "|---:|---|---:|---:|---:|---:|---:|"]
    for np in nps:
        for variant in matrix.VARIANTS:
            record = res.throughput.get((variant.key, model, np))
            if record is None:
                continue
            if record.get("status") != "ok":
                lines.append(f"| {np} | {variant.label} | {record.get('status', 'failed')} | | | | |")
                continue
            sps = record["samples_per_sec"]
            of_ceiling = ratio(sps, res.sps(matrix.CEILING[variant.framework], model, np))
            lines.append(
                f"| {np} | {variant.label} | {sps:,.0f}{' †' if record.get('noisy') else ''} "
                f"| {cell(ratio(sps, res.sps(matrix.DDP, model, np)), '.2f')} "
                f"| {cell(ratio(sps, res.sps(matrix.RAW_HOROVOD[variant.framework], model, np)), '.2f')} "
                f"| {cell(of_ceiling and 100 * of_ceiling, '.0f', '%')} | {cell(record.get('step_ms'), '.1f')} |")
    return [*lines, ""]


def phases_table(res: Results, models: list[str], np: int) -> list[str]:
    """Where rank 0's step time goes (ms), for every variant that recorded it."""
    rows = [(model, r) for model in models for v in matrix.VARIANTS
            if (r := res.throughput.get((v.key, model, np))) and r.get("status") == "ok" and r.get("phases_ms")]
    if not rows:
        return []
    lines = ["## Per-step time on rank 0", "", f"{np} workers, ms (DDP's allreduce happens inside backward).", "",
             "| model | variant | data | forward+backward | wait for allreduce | optimizer step | total |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for model, r in rows:
        p = r["phases_ms"]
        lines.append(f"| {model} | {r['label']} | {p.get('data', 0):.1f} | {p.get('fwd_bwd', 0):.1f} | "
                     f"{cell(p.get('allreduce_wait'), '.1f')} | {p.get('step', 0):.1f} | {sum(p.values()):.1f} |")
    return [*lines, ""]


def allreduce_table(data: dict[str, Any]) -> list[str]:
    """Median time and algorithm bandwidth of one float32 sum allreduce, by size and implementation."""
    cases = [r for r in data.get("allreduce", []) if r.get("status") == "ok"]
    if not cases:
        return []
    sizes = sorted({row["bytes"] for case in cases for row in case["rows"]})
    lines = ["## Allreduce", "", "| size | " + " | ".join(c["label"] for c in cases) + " |",
             "|---:|" + "---:|" * len(cases)]
    for nbytes in sizes:
        cells = [next((f"{row['median_ms']:.3g} ms, {row['algbw_gbps']:.2f} GB/s" for row in case["rows"]
                       if row["bytes"] == nbytes), "n/a") for case in cases]
        lines.append(f"| {_size(nbytes)} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def tuning_table(data: dict[str, Any]) -> list[str]:
    """Each tuning case against the case it changes one setting of."""
    records = data.get("tuning", [])
    if not records:
        return []
    by_key = {r["key"]: r for r in records}
    lines = ["## Settings", "", "| setting | model | samples/s | vs its baseline |", "|---|---|---:|---:|"]
    for r in records:
        base = by_key.get(r.get("reference") or "")
        if r.get("status") != "ok":
            lines.append(f"| {r['label']} | {r.get('model', '')} | {r.get('status', 'failed')} | |")
            continue
        change = ratio(r["samples_per_sec"], base and base.get("status") == "ok" and base["samples_per_sec"])
        lines.append(f"| {r['label']} | {r.get('model', '')} | {r['samples_per_sec']:,.0f} | "
                     f"{cell(change and 100 * (change - 1), '+.0f', '%')} |")
    return [*lines, ""]


def commands_table(data: dict[str, Any], np: int) -> list[str]:
    seen: dict[str, str] = {}
    for r in data.get("throughput", []):
        if r["np"] == np and "command" in r:
            seen.setdefault(r["label"], r["command"])
    if not seen:
        return []
    return ["## Commands", "", "| variant | command |", "|---|---|",
            *(f"| {label} | `{command}` |" for label, command in seen.items()), ""]


def _size(nbytes: int) -> str:
    for unit, scale in (("MiB", 1 << 20), ("KiB", 1 << 10)):
        if nbytes >= scale:
            return f"{nbytes / scale:g} {unit}"
    return f"{nbytes} B"


def write_plot(data: dict[str, Any], png_path: Path) -> None:
    """Samples/s per variant and model at the largest worker count, and allreduce bandwidth by size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    res, models, np = Results(data), data["models"], max(data["nps"])
    fig, (bars, curve) = plt.subplots(1, 2, figsize=(14, 6), gridspec_kw={"width_ratios": [3, 2]})
    variants = [v for v in matrix.VARIANTS if any(res.sps(v.key, m, np) for m in models)]
    width = 0.8 / max(len(variants), 1)
    for i, variant in enumerate(variants):
        xs = [j + (i - (len(variants) - 1) / 2) * width for j in range(len(models))]
        bars.bar(xs, [res.sps(variant.key, m, np) or 0.0 for m in models], width, label=variant.label,
                 hatch="//" if variant.framework == "tf" else None, edgecolor="white")
    bars.set_xticks(range(len(models)), models)
    bars.set_ylabel("samples/s (all workers)")
    bars.set_title(f"Training throughput, {np} workers")
    bars.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.08), ncol=3, frameon=False)
    for case in data.get("allreduce", []):
        if case.get("status") == "ok":
            rows = case["rows"]
            curve.plot([r["bytes"] for r in rows], [r["algbw_gbps"] for r in rows], marker="o", label=case["label"])
    curve.set_xscale("log", base=2)
    curve.set_yscale("log")
    curve.set_xlabel("message size (bytes)")
    curve.set_ylabel("allreduce bandwidth (GB/s)")
    curve.set_title("Allreduce bandwidth")
    if data.get("allreduce"):
        curve.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=2, frameon=False)
    fig.tight_layout()
    fig.savefig(png_path, dpi=110)
    plt.close(fig)


def write_report(data: dict[str, Any], md_path: Path, png_path: Path, goals: list[Goal] | None = None) -> None:
    md_path.write_text(render(data, load_goals() if goals is None else goals, png_path.name))
    write_plot(data, png_path)
