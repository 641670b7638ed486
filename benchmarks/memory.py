"""Memory per rank with sharded optimizer state (ZeRO stages 1 and 2) and with tensor-parallel layers, against
plain data parallelism.

    python -m benchmarks.memory            # writes benchmarks/results/memory.json, prints a Markdown table

A ~21M-parameter MLP with Adam in float32, two backward passes per step, under mpirun at 2 and 3
workers; and at 2 workers its two hidden layers split across both (T=2, column then row). Per rank:
the bytes of parameters, of the gradients held between the passes, and of Adam's state, measured from
the tensors; beside them the ZeRO paper's count (arXiv:1910.02054) for float32 Adam, 4 + 4 + 8 bytes
per parameter, of which stage 1 shards the 8 and stage 2 the gradients' 4 too (a split layer divides
all 16 by T); the peak RSS; and the throughput against plain data parallelism at the same worker count.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from benchmarks import launch as launching

TENSOR = "T=2"  # the mode that splits the hidden layers across 2 ranks instead of sharding
FORMULA = {0: lambda n: 4 + 4 + 8, 1: lambda n: 4 + 4 + 8 / n, 2: lambda n: 4 + 4 / n + 8 / n,
           TENSOR: lambda n: (4 + 4 + 8) / 2}


def measure(np: int, mode: int | str) -> list[dict]:
    args = ["--tensor", "2"] if mode == TENSOR else ["--shard", str(mode)]
    outcome = launching.run(launching.Launch("mpirun", np, launching.WORKERS / "memory_hvdtrain.py", args,
                                             env={"OMP_NUM_THREADS": "1"}), timeout=900)
    if not outcome.ok:
        print(f"np={np} {mode} failed:\n{outcome.tail}", file=sys.stderr)
    return sorted(outcome.results, key=lambda r: r["rank"])


def row(np: int, mode: int | str, ranks: list[dict], baseline: float) -> dict:
    worst = max(ranks, key=lambda r: r["optimizer_state_bytes"])
    held = worst["parameter_bytes"] + worst["gradient_bytes"] + worst["optimizer_state_bytes"]
    rate = ranks[0]["samples_per_sec"]
    return {"workers": np, "mode": mode, "parameters": worst["parameters"],
            "parameter_mb": worst["parameter_bytes"] / 2**20, "gradient_mb": worst["gradient_bytes"] / 2**20,
            "optimizer_state_mb": worst["optimizer_state_bytes"] / 2**20,
            "bytes_per_parameter": held / worst["parameters"], "zero_formula": FORMULA[mode](np),
            "peak_rss_mb": max(r["peak_rss_bytes"] for r in ranks) / 2**20, "samples_per_sec": rate,
            "vs_unsharded": rate / baseline if baseline else None}


def table(rows: list[dict]) -> str:
    lines = ["| workers | mode | params MB | grads MB (between passes) | Adam state MB | "
             "bytes/param | ZeRO formula | peak RSS MB | samples/s | vs stage 0 |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        mode = r["mode"] if r["mode"] == TENSOR else f"shard_optimizer_state={r['mode']}"
        lines.append(f"| {r['workers']} | {mode} | {r['parameter_mb']:.1f} | "
                     f"{r['gradient_mb']:.1f} | {r['optimizer_state_mb']:.1f} | {r['bytes_per_parameter']:.2f} | "
                     f"{r['zero_formula']:.2f} | {r['peak_rss_mb']:.0f} | {r['samples_per_sec']:.0f} | "
                     f"{r['vs_unsharded']:.2f}x |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[2, 3])
    parser.add_argument("--output", type=Path, default=launching.REPO / "benchmarks" / "results" / "memory.json")
    options = parser.parse_args(argv)
    rows = []
    for np in options.workers:
        modes: list[int | str] = [0, 1, 2] + ([TENSOR] if np == 2 else [])
        measured = {mode: measure(np, mode) for mode in modes}
        if not all(measured.values()):
            return 1
        baseline = measured[0][0]["samples_per_sec"]
        rows += [row(np, mode, ranks, baseline) for mode, ranks in measured.items()]
    options.output.parent.mkdir(parents=True, exist_ok=True)
    options.output.write_text(json.dumps(rows, indent=2) + "\n")
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
