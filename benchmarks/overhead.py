"""What a training loop costs per step on a tiny model: hvdtrain against a hand-written loop and its peers.

Usage:
    python -m benchmarks.overhead                 # make bench: 5 interleaved rounds, about 6 minutes on 2 cores
    python -m benchmarks.overhead --quick --output-dir DIR   # one short round (a smoke test)

Writes docs/performance-overhead.md and benchmarks/results/overhead.json (or both into --output-dir).
Each case runs in fresh processes, once per round, the rounds interleaved so that a drift of the machine
touches every case alike; the overhead of a case is its step time over its group's hand-written loop,
taken round by round, then the median.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from benchmarks import launch as launching
from benchmarks import sysinfo
from benchmarks.common import COMPARED_CHECKOUT_ENV, unavailable_reason

RESULTS = launching.REPO / "benchmarks" / "results"
DOCS = launching.REPO / "docs"
#: (group, key, the most overhead allowed, what it means): issue 23's goals.
GOALS = (("one process", "hvdtrain", 0.25, "the Trainer over a hand-written loop, one process"),
         ("np=2", "hvdtrain", 0.25, "the Trainer over a hand-written Horovod loop, np=2"),
         ("Keras, one process", "hvdtrain", 0.10, "htf.fit over plain model.fit, one process"))


@dataclass(frozen=True)
class Case:
    """One loop of one group, compared with the group's ``hand`` (or Keras ``plain``) loop."""

    group: str
    key: str
    label: str
    launcher: str
    np: int
    script: str
    args: tuple[str, ...]
    source: str = ""  # another checkout whose hvdtrain the worker imports (--compare-with)
    reference: str = ""  # the key of the group's row this one is compared with (default: the group's first)

    def launch(self, epochs: int, samples: int) -> launching.Launch:
        args = [*self.args, "--epochs", str(epochs), "--samples-per-rank", str(samples), "--variant", self.key]
        env = {COMPARED_CHECKOUT_ENV: self.source} if self.source else {}
        return launching.Launch(self.launcher, self.np, launching.WORKERS / self.script, args, env)


def _torch(group: str, loop: str, comm: str, launcher: str, np: int, label: str) -> Case:
    key = loop if comm != "ddp" or loop != "hand" else "hand-ddp"
    reference = "hand-ddp" if comm == "ddp" else ""  # torch.distributed peers against a DDP loop
    return Case(group, key, label, launcher, np, "overhead_torch.py", ("--loop", loop, "--comm", comm),
                reference=reference)


def _keras(group: str, loop: str, comm: str, launcher: str, np: int, label: str) -> Case:
    return Case(group, loop, label, launcher, np, "overhead_keras.py", ("--loop", loop, "--comm", comm))


#: The compared loops; the first of each group is its reference.
CASES = (
    _torch("one process", "hand", "none", "independent", 1, "hand-written loop"),
    _torch("one process", "hvdtrain", "none", "independent", 1, "hvdtrain Trainer (serial backend)"),
    _torch("one process", "lightning", "none", "independent", 1, "Lightning Trainer"),
    _torch("one process", "accelerate", "none", "independent", 1, "Accelerate loop"),
    _torch("np=1", "hand", "hvd", "mpirun", 1, "hand-written loop, Horovod"),
    _torch("np=1", "hvdtrain", "hvd", "mpirun", 1, "hvdtrain Trainer, Horovod"),
    _torch("np=2", "hand", "hvd", "mpirun", 2, "hand-written loop, Horovod"),
    _torch("np=2", "hvdtrain", "hvd", "mpirun", 2, "hvdtrain Trainer, Horovod"),
    _torch("np=2", "hand", "ddp", "torchrun", 2, "hand-written loop, DDP (gloo)"),
    _torch("np=2", "lightning", "ddp", "torchrun", 2, "Lightning Trainer, DDP (gloo)"),
    _torch("np=2", "accelerate", "ddp", "torchrun", 2, "Accelerate loop (gloo)"),
    _keras("Keras, one process", "plain", "none", "independent", 1, "plain model.fit"),
    _keras("Keras, one process", "hvdtrain", "none", "independent", 1, "htf.fit (serial backend)"),
    _keras("Keras, np=1", "plain", "none", "independent", 1, "plain model.fit"),
    _keras("Keras, np=1", "hvdtrain", "hvd", "mpirun", 1, "htf.fit, Horovod"),
)


def with_earlier(cases: list[Case], checkout: Path) -> list[Case]:
    """``cases`` with, after each hvdtrain row, the same row on ``checkout``'s hvdtrain."""
    if not (checkout / "hvdtrain" / "__init__.py").exists():
        raise SystemExit(f"--compare-with {checkout}: no hvdtrain package there (give a checkout's root)")
    commit = subprocess.run(["git", "-C", str(checkout), "log", "-1", "--format=%h"], capture_output=True,
                            text=True).stdout.strip() or checkout.name
    out = []
    for case in cases:
        out.append(case)
        if case.key == "hvdtrain":
            out.append(replace(case, key=f"hvdtrain@{commit}", label=f"{case.label} at {commit}",
                               source=str(checkout)))
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.overhead", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one short round")
    parser.add_argument("--rounds", type=int, help="interleaved rounds (default 5, quick 1)")
    parser.add_argument("--epochs", type=int, help="timed epochs per run (default 5, quick 1)")
    parser.add_argument("--samples", type=int, help="samples per rank and epoch (default 6400, quick 640)")
    parser.add_argument("--cases", nargs="+", help="only cases whose group or key contains one of these")
    parser.add_argument("--compare-with", type=Path, metavar="CHECKOUT",
                        help="also time the hvdtrain rows with the hvdtrain package of another checkout (e.g. a "
                             "`git worktree` of main), in the same rounds: a before/after figure")
    parser.add_argument("--output-dir", type=Path, help="write performance-overhead.md and overhead.json here")
    parser.add_argument("--timeout", type=float, default=180.0, help="seconds before a run is killed")
    return parser.parse_args(argv)


def log(message: str) -> None:
    print(f"[overhead {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def run_case(case: Case, epochs: int, samples: int, timeout: float) -> dict[str, Any]:
    """One run of ``case``: rank 0's per-epoch µs per step and their median, or why it did not run."""
    outcome = launching.run(case.launch(epochs, samples), timeout)
    rank0 = outcome.rank0()
    if rank0 is None:
        reason = unavailable_reason(outcome.tail)
        return {"status": f"not available: {reason}" if reason else "failed",
                "error": "" if reason else outcome.tail[-1500:]}
    return {"status": "ok", "us_per_step": statistics.median(rank0["us_per_step"]),
            "epochs_us_per_step": rank0["us_per_step"], "foreign_cpu": outcome.foreign_cpu}


def measure(cases: list[Case], rounds: int, epochs: int, samples: int, timeout: float) -> list[dict[str, Any]]:
    """Every case once per round, the rounds one after another."""
    runs: dict[tuple[str, str], list[dict[str, Any]]] = {(c.group, c.key): [] for c in cases}
    for number in range(rounds):
        for case in cases:
            result = run_case(case, epochs, samples, timeout)
            runs[(case.group, case.key)].append(result)
            shown = f"{result['us_per_step']:.0f} µs/step" if result["status"] == "ok" else result["status"]
            log(f"round {number + 1}/{rounds} {case.group}: {case.label}: {shown}")
    return [summarize(case, _reference(cases, case), runs, epochs, samples) for case in cases]


def _reference(cases: list[Case], case: Case) -> Case:
    group = [c for c in cases if c.group == case.group]
    return next((c for c in group if c.key == case.reference), group[0])


def summarize(case: Case, reference_case: Case, every_run: dict[tuple[str, str], list[dict[str, Any]]],
              epochs: int, samples: int) -> dict[str, Any]:
    """The case's median and spread over rounds, and its overhead over the reference, round by round."""
    runs, reference = every_run[(case.group, case.key)], every_run[(case.group, reference_case.key)]
    record: dict[str, Any] = {"group": case.group, "key": case.key, "label": case.label, "np": case.np,
                              "reference": None if reference_case is case else reference_case.label,
                              "command": case.launch(epochs, samples).display(), "runs": runs}
    times = [run["us_per_step"] for run in runs if run["status"] == "ok"]
    if not times:
        return {**record, "status": runs[0]["status"] if runs else "not run",
                "error": runs[0].get("error", "") if runs else ""}
    ratios = [run["us_per_step"] / ref["us_per_step"] - 1.0 for run, ref in zip(runs, reference)
              if run["status"] == ref["status"] == "ok"]
    return {**record, "status": "ok", "us_per_step": statistics.median(times), "min": min(times), "max": max(times),
            "overhead": statistics.median(ratios) if ratios else None}


def goal_lines(records: list[dict[str, Any]]) -> list[str]:
    """Each overhead goal, met or not, with the figure."""
    lines = []
    for group, key, limit, meaning in GOALS:
        record = next((r for r in records if r["group"] == group and r["key"] == key), None)
        what = f"overhead of {meaning} ≤ {limit:.0%}"
        if record is None or record.get("overhead") is None:
            lines.append(f"- {what}: not measured")
            continue
        met = "met" if record["overhead"] <= limit else "NOT met"
        lines.append(f"- {what}: **{met}** ({record['overhead']:+.0%}, {record['us_per_step']:.0f} µs per step)")
    return lines


def markdown(data: dict[str, Any]) -> str:
    """The report: one table of all cases, then the goals."""
    lines = [
        "# Per-step overhead on a tiny model (generated)", "",
        f"Generated by `{data['command']}` on {data['started']}: {data['rounds']} interleaved rounds, "
        f"{data['epochs']} timed epochs of {data['samples']} samples per rank (batch 32) after one warmup epoch, "
        "one thread per process. Model 32-32-10, SGD, cross-entropy. µs per step: the median over rounds of "
        "each run's median epoch, and the range over rounds; overhead: the step time over the group's "
        "first row, round by round, median.", "",
        f"Machine: {machine_line(data['machine'])}.", "",
        "| group | loop | µs per step | range | overhead | over | command |", "|---|---|---:|---:|---:|---|---|"]
    for r in data["records"]:
        if r["status"] != "ok":
            lines.append(f"| {r['group']} | {r['label']} | {r['status']} | | | | `{r['command']}` |")
            continue
        overhead = "" if r["reference"] is None or r["overhead"] is None else f"{r['overhead']:+.0%}"
        lines.append(f"| {r['group']} | {r['label']} | {r['us_per_step']:.0f} | {r['min']:.0f}-{r['max']:.0f} | "
                     f"{overhead} | {r['reference'] or 'reference'} | `{r['command']}` |")
    lines += ["", "## Goals", "", *goal_lines(data["records"]), ""]
    return "\n".join(lines)


def machine_line(machine: dict[str, Any]) -> str:
    """The machine and every compared framework's version, on one line."""
    names = ("python", "torch", "horovod", "lightning", "accelerate", "tensorflow", "keras")
    return f"{machine['cpu']}, {machine['cores']} cores; " + ", ".join(f"{n} {machine[n]}" for n in names)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    rounds = args.rounds or (1 if args.quick else 5)
    epochs = args.epochs or (1 if args.quick else 5)
    samples = args.samples or (640 if args.quick else 6400)
    cases = [c for c in CASES if not args.cases or any(s in c.group or s in c.key for s in args.cases)]
    if args.compare_with:
        cases = with_earlier(cases, args.compare_with.resolve())
    data = {"command": " ".join(["python -m benchmarks.overhead", *argv]), "machine": sysinfo.describe(),
            "started": time.strftime("%Y-%m-%d %H:%M"), "rounds": rounds, "epochs": epochs, "samples": samples}
    data["records"] = measure(cases, rounds, epochs, samples, args.timeout)
    out = args.output_dir
    json_path = (out or RESULTS) / "overhead.json"
    md_path = (out or DOCS) / "performance-overhead.md"
    json_path.parent.mkdir(parents=True, exist_ok=True)
    md_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(data, indent=1, sort_keys=True))
    md_path.write_text(markdown(data))
    log(f"wrote {md_path} and {json_path}")
    return 1 if any(r["status"] == "failed" for r in data["records"]) else 0


if __name__ == "__main__":
    sys.exit(main())
