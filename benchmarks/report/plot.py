"""docs/performance.png: throughput per variant and model, and allreduce bandwidth by message size."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmarks import matrix
from benchmarks.report.results import Results
from benchmarks.report.text import size, title, workers


def write_plot(data: dict[str, Any], png_path: Path) -> None:
    """Bar chart of samples/s per variant per model at the largest np, and allreduce bandwidth."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    res = Results(data)
    fig, (bars, curve) = plt.subplots(1, 2, figsize=(14, 6), gridspec_kw={"width_ratios": [3, 2]})
    _bar_chart(bars, res, data["models"], max(data["nps"]))
    _bandwidth_chart(curve, res)
    fig.tight_layout()
    fig.savefig(png_path, dpi=110)
    plt.close(fig)


def _bar_chart(ax: Any, res: Results, models: list[str], np: int) -> None:
    variants = [v for v in matrix.VARIANTS if any(res.sps(v.key, m, np) for m in models)]
    width = 0.8 / max(len(variants), 1)
    for i, variant in enumerate(variants):
        values = [res.sps(variant.key, m, np) or 0.0 for m in models]
        xs = [j + (i - (len(variants) - 1) / 2) * width for j in range(len(models))]
        bars = ax.bar(xs, values, width, label=variant.label,
                      hatch="//" if variant.framework == "tf" else None, edgecolor="white")
        ax.bar_label(bars, labels=[f"{v:,.0f}" if v else "" for v in values], fontsize=6, rotation=90, padding=2)
    ax.set_xticks(range(len(models)), [title(m) for m in models])
    ax.set_ylabel("samples/s (all workers)")
    batch = res.shared("throughput", "batch_size")
    ax.set_title(f"Training throughput, {workers(np)}" + (f", batch {batch} each" if batch else ""))
    ax.margins(y=0.15)
    if variants:
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.08), ncol=3, frameon=False)
    ax.grid(axis="y", alpha=0.3)


def _bandwidth_chart(ax: Any, res: Results) -> None:
    sizes: set[int] = set()
    for case in matrix.ALLREDUCE_CASES:
        rows = res.allreduce.get(case.key, {}).get("rows", [])
        if rows:
            ax.plot([r["bytes"] for r in rows], [r["algbw_gbps"] for r in rows], marker="o", label=case.label)
            sizes.update(r["bytes"] for r in rows)
    if not sizes:
        ax.set_title("Allreduce bandwidth (not measured)")
        return
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ordered = sorted(sizes)
    ax.set_xticks(ordered, [size(b) for b in ordered], fontsize=7)
    ax.set_xlabel("message size")
    ax.set_ylabel("allreduce bandwidth (GB/s, log scale)")
    np = res.shared("allreduce", "np")
    ax.set_title("Allreduce bandwidth" + (f", {workers(np)}" if np else ""))
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=2, frameon=False)
    ax.grid(alpha=0.3, which="both")
