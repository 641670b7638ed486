"""The tables: throughput per model, per-step phases, launch commands and allreduce latency."""
from __future__ import annotations

from benchmarks import matrix
from benchmarks.report.results import Record, Results
from benchmarks.report.text import fmt, ratio, size, title, workers

#: The PyTorch variants whose per-step phases are compared.
PHASE_VARIANTS = (matrix.TORCH_CEILING, matrix.TORCH_HVD_MPI, matrix.TORCH_HVD_GLOO, matrix.TORCH_DDP)


def throughput_table(res: Results, model: str, nps: list[int]) -> list[str]:
    """Every variant's throughput on ``model`` for each worker count, with the ratio columns."""
    lines = [f"### {title(model)}", "",
             "| workers | variant | samples/s | × DDP | × raw Horovod | % of ceiling | vs 1 worker | step ms |",
             "|---:|---|---:|---:|---:|---:|---:|---:|"]
    for np in nps:
        for variant in matrix.VARIANTS:
            record = res.throughput.get((variant.key, model, np))
            if record is not None:
                lines.append(_throughput_row(res, record, variant, model, np))
    return [*lines, ""]


def _throughput_row(res: Results, record: Record, variant: matrix.Variant, model: str, np: int) -> str:
    if record.get("status") != "ok":
        return f"| {np} | {variant.label} | {record.get('status', 'failed').split(':')[0]} | | | | | |"
    sps = record["samples_per_sec"]
    ceiling = res.sps(matrix.CEILING[variant.framework], model, np)
    single = res.sps(variant.key, model, 1) if np > 1 else None
    dagger = " †" if record.get("noisy") else ""
    vs_ddp = ratio(sps, res.sps(matrix.DDP, model, np))
    vs_hvd = ratio(sps, res.sps(matrix.RAW_HOROVOD[variant.framework], model, np))
    return (f"| {np} | {variant.label} | {sps:,.0f}{dagger} | {fmt(vs_ddp, '.2f')} | {fmt(vs_hvd, '.2f')}"
            f" | {fmt(100 * ratio(sps, ceiling) if ceiling else None, '.0f', '%')}"
            f" | {fmt(ratio(sps, single), '.2f', '×')} | {fmt(record.get('step_ms'), '.1f')} |")


def unavailable_note(res: Results) -> list[str]:
    """The variants this checkout could not run, and why."""
    missing = sorted({(r["label"], r["status"]) for r in res.throughput.values()
                      if r.get("status", "").startswith("not available")})
    if not missing:
        return []
    return ["Not measured in this run: " + "; ".join(f"{label} ({status})" for label, status in missing) + ".",
            ""]


def phases_table(res: Results, model: str, np: int) -> list[str]:
    """Where rank 0's step time goes, per PyTorch variant."""
    records = [res.throughput.get((v.key, model, np)) for v in PHASE_VARIANTS]
    records = [r for r in records if r and r.get("status") == "ok" and r.get("phases_ms")]
    if not records:
        return []
    lines = [f"Per-step time on rank 0, {title(model)}, {workers(np)} (ms; DDP's allreduce happens inside "
             "backward):", "",
             "| variant | data | forward+backward | wait for allreduce | optimizer step | total |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in records:
        p = r["phases_ms"]
        lines.append(f"| {r['label']} | {p.get('data', 0):.1f} | {p.get('fwd_bwd', 0):.1f} | "
                     f"{fmt(p.get('allreduce_wait'), '.1f')} | {p.get('step', 0):.1f} | {sum(p.values()):.1f} |")
    return [*lines, ""]


def commands_section(res: Results, np: int) -> list[str]:
    """The command line of each variant at ``np`` workers."""
    lines = [f"### Launch commands ({workers(np)})", "", "| variant | command |", "|---|---|"]
    seen = set()
    for record in res.data.get("throughput", []):
        if record["np"] != np or record["key"] in seen or "command" not in record:
            continue
        seen.add(record["key"])
        lines.append(f"| {record['label']} | `{record['command']}` |")
    return [*lines, ""]


def allreduce_section(res: Results) -> list[str]:
    """Median time and bandwidth of each allreduce implementation by message size."""
    cases = [c for c in matrix.ALLREDUCE_CASES if c.key in res.allreduce]
    if not cases:
        return []
    np = res.shared("allreduce", "np")
    sizes = sorted({row["bytes"] for c in cases for row in res.allreduce[c.key]["rows"]})
    lines = ["## Allreduce latency and bandwidth" + (f" ({workers(np)})" if np else ""), "",
             "Median time of one in-place float32 sum allreduce, and algorithm bandwidth (bytes / time"
             f"{_bus_bandwidth(np)}).", "",
             "| size | " + " | ".join(c.label for c in cases) + " |", "|---:|" + "---:|" * len(cases)]
    for nbytes in sizes:
        cells = [_allreduce_cell(res, case.key, nbytes) for case in cases]
        lines.append(f"| {size(nbytes)} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def _bus_bandwidth(np: int | None) -> str:
    """How a ring allreduce's bus bandwidth relates to the algorithm bandwidth: 2(n-1)/n times it."""
    if not np or np < 2:
        return ""
    factor = 2 * (np - 1) / np
    return f"; for {np} workers the ring bus bandwidth is " + (
        "the same number" if factor == 1 else f"{factor:.3g}× that")


def _allreduce_cell(res: Results, key: str, nbytes: int) -> str:
    row = next((r for r in res.allreduce[key]["rows"] if r["bytes"] == nbytes), None)
    return "n/a" if row is None else f"{row['median_ms']:.3g} ms, {row['algbw_gbps']:.2f} GB/s"
