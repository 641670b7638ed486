"""Pipeline parallelism: hvdtrain's Trainer against torch.distributed.pipelining, 2 stages on this machine.

    python -m benchmarks.pipeline                 # writes benchmarks/results/pipeline.json, prints a table
    python -m benchmarks.pipeline --rounds 1      # a quicker look

The same MLP, micro-batches, batches and data for both (benchmarks/pipeline_workload.py); hvdtrain
under mpirun, torch on gloo under torchrun, one thread per rank. Rounds alternate the variants, and
each figure is the median round. The speed-up is against the whole model in one process; a pipeline
of P stages and M micro-batches can reach at most P x M / (M + P - 1) of it (the bubble).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from benchmarks import launch as launching

STAGES = 2
VARIANTS = {  # name: (launcher, np, worker)
    "hvdtrain": ("mpirun", STAGES, "pipeline_hvdtrain.py"),
    "hvdtrain stage loop (no Trainer)": ("mpirun", STAGES, "pipeline_stage_loop.py"),
    "torch.distributed.pipelining": ("torchrun", STAGES, "pipeline_torch.py"),
}


def measure(name: str, launcher: str, np: int, worker: str, args: list[str]) -> float | None:
    outcome = launching.run(launching.Launch(launcher, np, launching.WORKERS / worker, args,
                                             env={"OMP_NUM_THREADS": "1"}), timeout=600)
    rate = outcome.rank0() and outcome.rank0()["samples_per_sec"]
    if not rate:
        print(f"{name} failed:\n{outcome.tail}", file=sys.stderr)
    return rate


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--micro-batches", type=int, default=4)
    parser.add_argument("--output", type=Path, default=launching.REPO / "benchmarks" / "results" / "pipeline.json")
    options = parser.parse_args(argv)
    workload = ["--micro-batches", str(options.micro_batches)]
    single = [measure("one process", "independent", 1, "pipeline_single.py", workload)
              for _ in range(options.rounds)]
    rates: dict[tuple[str, str], list[float]] = {}
    for _ in range(options.rounds):
        for schedule in ("1f1b", "gpipe"):
            for name, (launcher, np, worker) in VARIANTS.items():
                rate = measure(name, launcher, np, worker, [*workload, "--schedule", schedule])
                rates.setdefault((name, schedule), []).append(rate or 0.0)
    baseline = statistics.median(r or 0.0 for r in single)
    ideal = STAGES * options.micro_batches / (options.micro_batches + STAGES - 1)
    rows = [{"variant": name, "schedule": schedule, "samples_per_sec": statistics.median(values),
             "rounds": values, "speedup": statistics.median(values) / baseline if baseline else None}
            for (name, schedule), values in rates.items()]
    for row in rows:
        torch_rate = next(r["samples_per_sec"] for r in rows
                          if r["variant"] == "torch.distributed.pipelining" and r["schedule"] == row["schedule"])
        row["vs_torch"] = row["samples_per_sec"] / torch_rate if torch_rate else None
        row["of_ideal"] = row["speedup"] / ideal if row["speedup"] else None
    result = {"stages": STAGES, "micro_batches": options.micro_batches, "one_process": baseline,
              "ideal_speedup": ideal, "rows": rows, "command": " ".join(["python -m benchmarks.pipeline", *argv])
              if argv else "python -m benchmarks.pipeline"}
    options.output.parent.mkdir(parents=True, exist_ok=True)
    options.output.write_text(json.dumps(result, indent=1))
    print(f"one process, whole model: {baseline:,.0f} samples/s; ideal speed-up {ideal:.2f}x")
    print("| variant | schedule | samples/s | x torch | speed-up | of ideal |")
    for row in rows:
        print(f"| {row['variant']} | {row['schedule']} | {row['samples_per_sec']:,.0f} | {row['vs_torch']:.2f} | "
              f"{row['speedup']:.2f}x | {row['of_ideal']:.0%} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
