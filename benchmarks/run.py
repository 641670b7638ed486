"""Run every benchmark configuration, one at a time, and write the report.

Usage:
    python -m benchmarks.run                         # full run (make bench), ~22 minutes on 2 cores
    python -m benchmarks.run --quick --output-dir DIR  # tiny smoke run, < 90 s
    python -m benchmarks.run --from-json FILE        # rewrite the report from saved results

Full runs write docs/performance-results.md (tables), docs/performance.png and
benchmarks/results/latest.json; with ``--output-dir`` all three go there. docs/performance.md, what
the figures mean, is written by hand from them.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks import launch as launching
from benchmarks import matrix, report, sysinfo
from benchmarks.common import unavailable_reason

DOCS = launching.REPO / "docs"
RESULTS = launching.REPO / "benchmarks" / "results"


@dataclass
class Plan:
    """Everything one benchmark run will do."""

    quick: bool
    models: list[str]
    nps: list[int]
    steps: dict[str, matrix.Steps]
    samples_per_rank: int
    variants: list[matrix.Variant]
    tuning: list[matrix.TuningCase]
    allreduce_sizes: list[int]
    allreduce_budget_mb: float
    timeout: float
    quiet_wait: float
    retry_noisy: bool


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny models, np=2, few steps (< 90 s)")
    parser.add_argument("--output-dir", type=Path, help="write performance-results.md, performance.png and "
                                                         "latest.json here")
    parser.add_argument("--from-json", type=Path, help="only rewrite the report from saved results")
    parser.add_argument("--update", type=Path, metavar="JSON",
                        help="re-measure only what the other options select and replace those records in JSON "
                             "(e.g. cases another job disturbed), then rewrite the report")
    parser.add_argument("--models", nargs="+", help="subset of models (mlp cnn)")
    parser.add_argument("--np", nargs="+", type=int, dest="nps", help="worker counts (default 1 2)")
    parser.add_argument("--variants", nargs="+", help="only variants whose key contains one of these")
    parser.add_argument("--warmup", type=int, help="override warmup steps of every model")
    parser.add_argument("--steps", type=int, help="override steps per timed window")
    parser.add_argument("--repeats", type=int, help="override the number of timed windows")
    parser.add_argument("--no-tuning", action="store_true", help="skip the Horovod settings sweep")
    parser.add_argument("--no-allreduce", action="store_true", help="skip the allreduce sweep")
    parser.add_argument("--no-throughput", action="store_true", help="skip the side-by-side comparison")
    parser.add_argument("--tuning-cases", nargs="+", metavar="KEY",
                        help="only tuning cases whose key contains one of these")
    parser.add_argument("--timeout", type=float, help="seconds before a launch is killed")
    parser.add_argument("--quiet-wait", type=float,
                        help="seconds to wait for other work on the machine to stop before each launch")
    return parser.parse_args(argv)


def make_plan(args: argparse.Namespace) -> Plan:
    """Turn the command line into a plan (quick and full defaults, then overrides)."""
    base = matrix.QUICK_STEPS if args.quick else matrix.FULL_STEPS
    models = args.models or list(base)
    # Tuning cases may use a model outside --models: give every known model its steps.
    steps = {m: _steps(base.get(m, next(iter(base.values()))), args) for m in {*models, *base}}
    variants = [v for v in matrix.VARIANTS
                if not args.variants or any(s in v.key for s in args.variants)]
    tuning = [] if (args.quick or args.no_tuning) else [
        case for case in matrix.tuning_cases()
        if not args.tuning_cases or any(k in case.key for k in args.tuning_cases)]
    if args.no_throughput:
        variants = []
    return Plan(
        quick=args.quick, models=models, nps=args.nps or ([2] if args.quick else [1, 2]), steps=steps,
        samples_per_rank=1024 if args.quick else 8192, variants=variants, tuning=tuning,
        allreduce_sizes=[] if args.no_allreduce else (matrix.QUICK_SIZES if args.quick else matrix.FULL_SIZES),
        allreduce_budget_mb=8.0 if args.quick else 512.0,
        timeout=args.timeout or (60.0 if args.quick else 300.0),
        quiet_wait=args.quiet_wait if args.quiet_wait is not None else (0.0 if args.quick else 20.0),
        retry_noisy=not args.quick)


def _steps(default: matrix.Steps, args: argparse.Namespace) -> matrix.Steps:
    return matrix.Steps(default.warmup if args.warmup is None else args.warmup,
                        args.steps or default.steps, args.repeats or default.repeats)


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


Parser = Callable[[launching.Outcome], dict[str, Any]]


def measure(launch: launching.Launch, plan: Plan, parsers: dict[str, Parser]) -> dict[str, dict[str, Any]]:
    """Run one launch (after waiting for a quiet machine), again if other processes disturbed it.

    Args:
        launch: what to run.
        plan: timeouts, quiet wait and retry policy.
        parsers: one record is made per entry (e.g. per model measured by the launch).

    Returns:
        The records, by parser key, of the least disturbed of at most two attempts.
    """
    best: dict[str, dict[str, Any]] = {}
    for attempt in range(2 if plan.retry_noisy else 1):
        load_before = launching.wait_for_quiet(plan.quiet_wait) if plan.quiet_wait else None
        outcome = launching.run(launch, plan.timeout)
        common = {"command": launch.display(), "seconds": round(outcome.seconds, 1),
                  "foreign_cpu": outcome.foreign_cpu, "load_before": load_before, "attempt": attempt + 1}
        records = {key: _record(outcome, common, parse) for key, parse in parsers.items()}
        if any(r["status"] == "failed" for r in records.values()):
            return records
        if not best or outcome.foreign_cpu < next(iter(best.values()))["foreign_cpu"]:
            best = records
        noisy = [r for r in records.values() if r["noisy"]]
        if not noisy:
            return records
        worst = max(max(r.get("window_foreign_cores") or [r["foreign_cpu"]]) for r in noisy)
        log(f"  other processes used up to {worst:.2f} cores during the timed windows" +
            ("; measuring again" if attempt == 0 and plan.retry_noisy else ""))
    return best


def _record(outcome: launching.Outcome, common: dict[str, Any], parse: Parser) -> dict[str, Any]:
    record = dict(common)
    try:
        parsed = parse(outcome) if outcome.ok else None
    except (KeyError, IndexError, TypeError, ValueError) as error:
        parsed, outcome.tail = None, f"{outcome.tail}\n[unparsable result: {error!r}]"
    if not parsed:
        reason = unavailable_reason(outcome.tail)
        if reason:
            return {**record, "status": f"not available: {reason}", "noisy": False}
        return {**record, "status": "failed", "error": outcome.tail[-1500:]}
    return {**record, "status": "ok", "noisy": outcome.foreign_cpu > matrix.NOISY_CORES, **parsed}


def parse_throughput(outcome: launching.Outcome, independent: bool, model: str) -> dict[str, Any] | None:
    """Rank 0's figures for ``model`` (for independent processes, throughput summed over processes).

    Each worker reports its timed windows; windows during which other
    processes used more than ``matrix.NOISY_CORES`` are dropped before the median
    when at least one clean window remains.
    """
    results = [r for r in outcome.results if r.get("model") == model]
    rank0 = next((r for r in results if r.get("rank") == 0), None)
    if rank0 is None or (independent and len(results) < rank0["size"]):
        return None
    fields = ("local_samples_per_sec_windows", "phases_ms", "loss_first", "loss_last", "threads", "extra",
              "window_seconds")
    parsed: dict[str, Any] = {k: rank0.get(k) for k in fields}
    rates = [_clean_rate(r, outcome.load_samples) for r in (results if independent else [rank0])]
    local0, _, loads0 = rates[0]
    parsed["window_foreign_cores"] = loads0
    parsed["noisy"] = any(noisy for _, noisy, _ in rates)
    parsed["local_samples_per_sec"] = round(local0, 2)
    parsed["step_ms"] = round(1000.0 * rank0["batch_size"] / local0, 3) if local0 else None
    if independent:
        parsed["per_process"] = [round(rate, 2) for rate, _, _ in rates]
        parsed["samples_per_sec"] = round(sum(parsed["per_process"]), 2)
    else:
        parsed["samples_per_sec"] = round(local0 * rank0["size"], 2)
    return parsed


def _clean_rate(result: dict[str, Any], samples: list[tuple[float, float, float]]) -> tuple[float, bool, list]:
    """(median samples/s of the undisturbed windows, whether none was undisturbed, load per window)."""
    rates = result.get("local_samples_per_sec_windows") or [result.get("local_samples_per_sec", 0.0)]
    loads = launching.window_loads(result.get("window_marks") or [], samples) or [0.0] * len(rates)
    clean = [rate for rate, load in zip(rates, loads) if load <= matrix.NOISY_CORES]
    return statistics.median(clean or rates), not clean, loads


def _throughput_parsers(launch: launching.Launch, models: list[str]) -> dict[str, Parser]:
    independent = launch.launcher == "independent"
    return {m: (lambda outcome, m=m: parse_throughput(outcome, independent, m)) for m in models}


def _groups(plan: Plan) -> list[list[str]]:
    """Models measured by one launch: all at once in quick mode (start-up dominates), else one each."""
    return [plan.models] if plan.quick else [[m] for m in plan.models]


def run_throughput(plan: Plan) -> list[dict[str, Any]]:
    """The side-by-side comparison: every variant, model and worker count."""
    records = []
    for models in _groups(plan):
        for np in plan.nps:
            for variant in plan.variants:
                if variant.key.startswith("hvdtrain") and variant.key.endswith("-mpi") and np == 1:
                    continue  # the launcher makes no difference to a single worker
                records += _run_variant(plan, variant, models, np)
    return records


def _run_variant(plan: Plan, variant: matrix.Variant, models: list[str], np: int) -> list[dict[str, Any]]:
    bases = {m: {"kind": "throughput", "key": variant.key, "label": variant.label, "framework": variant.framework,
                 "model": m, "np": np, "batch_size": 128, "threads": variant.threads} for m in models}
    missing = variant.missing()
    if missing:
        return [{**base, "status": missing} for base in bases.values()]
    log(f"{','.join(models)} np={np} {variant.key}")
    launch = variant.launch(np, models, plan.steps[models[0]], plan.samples_per_rank)
    measured = measure(launch, plan, _throughput_parsers(launch, models))
    records = [{**bases[m], **measured[m]} for m in models]
    for record in records:
        log(f"  -> {record['model']}: {_summary(record)}")
    return records


def run_tuning(plan: Plan) -> list[dict[str, Any]]:
    """The Horovod settings sweep."""
    records = []
    for case in plan.tuning:
        log(f"tuning {case.key} ({case.model}, np={case.np})")
        launch = case.variant.launch(case.np, [case.model], plan.steps[case.model], plan.samples_per_rank)
        record = {"kind": "tuning", "key": case.key, "label": case.label, "group": case.group,
                  "reference": case.reference,
                  "model": case.model, "np": case.np, "threads": case.variant.threads,
                  **measure(launch, plan, _throughput_parsers(launch, [case.model]))[case.model]}
        records.append(record)
        log(f"  -> {_summary(record)}")
    return records


def run_allreduce(plan: Plan) -> list[dict[str, Any]]:
    """Allreduce latency and bandwidth by message size, per implementation (``matrix.ALLREDUCE_NP`` workers)."""
    records = []
    if not plan.allreduce_sizes:
        return records
    for case in matrix.ALLREDUCE_CASES:
        log(f"allreduce {case.key}")
        launch = case.launch(matrix.ALLREDUCE_NP, plan.allreduce_sizes, plan.allreduce_budget_mb)
        record = {"kind": "allreduce", "key": case.key, "label": case.label, "np": matrix.ALLREDUCE_NP,
                  **measure(launch, plan, {"": _allreduce_rows})[""]}
        records.append(record)
        log(f"  -> {record['status']}")
    return records


def _allreduce_rows(outcome: launching.Outcome) -> dict[str, Any] | None:
    rows = (outcome.rank0() or {}).get("rows")
    return {"rows": rows} if rows else None


def _summary(record: dict[str, Any]) -> str:
    if record.get("status") != "ok":
        return record.get("status", "?") + ": " + str(record.get("error", ""))[-300:]
    return f"{record['samples_per_sec']:.0f} samples/s ({record['seconds']} s, others used " \
           f"{record['foreign_cpu']:.2f} cores)"


def output_paths(args: argparse.Namespace) -> tuple[Path, Path, Path]:
    """Where the markdown, the figure and the JSON go."""
    if args.output_dir:
        out = args.output_dir
        return out / "performance-results.md", out / "performance.png", out / "latest.json"
    return DOCS / "performance-results.md", DOCS / "performance.png", RESULTS / "latest.json"


def command_line(argv: list[str]) -> str:
    """The command that reproduces this run."""
    return " ".join(["python -m benchmarks.run", *argv])


def measure_all(args: argparse.Namespace, argv: list[str]) -> dict[str, Any]:
    """Run everything the command line selects; returns the results document."""
    plan = make_plan(args)
    started = time.time()
    data = {"machine": sysinfo.describe(), "command": command_line(argv), "quick": plan.quick,
            "started": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)),
            "steps": {m: vars(s) for m, s in plan.steps.items() if m in plan.models}, "models": plan.models,
            "nps": plan.nps, "samples_per_rank": plan.samples_per_rank}
    data["throughput"] = run_throughput(plan)
    data["allreduce"] = run_allreduce(plan)
    data["tuning"] = run_tuning(plan)
    data["duration_s"] = round(time.time() - started, 1)
    return data


def _identity(record: dict[str, Any]) -> tuple:
    return record.get("kind"), record.get("key"), record.get("model"), record.get("np")


def merge(base: dict[str, Any], update: dict[str, Any], command: str) -> dict[str, Any]:
    """``base`` with every record of ``update`` replacing the record of the same kind, key, model and np."""
    merged = dict(base)
    for section in ("throughput", "allreduce", "tuning"):
        fresh = {_identity(r): r for r in update.get(section, [])}
        merged[section] = [fresh.pop(_identity(r), r) for r in base.get(section, [])] + list(fresh.values())
        for record in merged[section]:
            if _identity(record) in {_identity(r) for r in update.get(section, [])}:
                record["remeasured"] = update["started"]
    merged["remeasured"] = [*base.get("remeasured", []), {"started": update["started"], "command": command}]
    return merged


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    md_path, png_path, json_path = output_paths(args)
    if args.update and not args.output_dir:
        json_path = args.update
    if args.from_json:
        data = json.loads(args.from_json.read_text())
    else:
        data = measure_all(args, argv)
        if args.update:
            data = merge(json.loads(args.update.read_text()), data, command_line(argv))
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(data, indent=1, sort_keys=True))
    md_path.parent.mkdir(parents=True, exist_ok=True)
    report.write_report(data, md_path, png_path)
    log(f"wrote {md_path}, {png_path}" + ("" if args.from_json else f", {json_path}"))
    # A failing tuning case is a finding (some settings crash Horovod); a failing comparison is an error.
    failed = [r for r in data["throughput"] + data["allreduce"] if r.get("status") == "failed"]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
