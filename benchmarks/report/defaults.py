"""The "Fast defaults" section: launch recommendations derived from the settings sweep, then the sweep."""
from __future__ import annotations

from benchmarks import matrix
from benchmarks.launch import MPI_FAST
from benchmarks.matrix import Tuning
from benchmarks.report.results import CLEAR_WIN, Record, Results
from benchmarks.report.text import pct, ratio, workers


def fast_defaults(res: Results) -> list[str]:
    """Recommendations derived from the tuning sweep, then the sweep itself."""
    base = res.tuned(Tuning.BASELINE)
    if not base:
        return []
    noise = res.noise()
    case = res.case(Tuning.BASELINE)
    lines = ["## Fast defaults", "",
             f"Raw Horovod PyTorch loop, {res.model_name(Tuning.BASELINE)}, {workers(case['np'])} unless marked "
             f"{res.model_name(Tuning.CNN_BASELINE)}; baseline = tuned mpirun (`{' '.join(MPI_FAST)}`, Horovod "
             f"defaults) at {base:,.0f} samples/s. Run-to-run noise on this machine is about ±{100 * noise:.0f}% "
             "(the same configuration measured twice in this run), so smaller differences are not significant.", "",
             "Recommended launch defaults for hvdtrain on CPU hosts like this one:", ""]
    lines += [f"{i}. {text}" for i, text in enumerate(recommendations(res, noise), 1)]
    lines += ["", "| setting | samples/s | vs its baseline |", "|---|---:|---:|"]
    lines += [_sweep_row(res, record) for record in res.data.get("tuning", [])]
    return [*lines, ""]


def _sweep_row(res: Results, record: Record) -> str:
    if record.get("status") != "ok":
        return f"| {record['label']} | {_failure(record)} | |"
    sps = record["samples_per_sec"]
    ref = res.tuned(res.case(record["key"]).get("reference") or Tuning.BASELINE)
    dagger = " †" if record.get("noisy") else ""
    return f"| {record['label']} | {sps:,.0f}{dagger} | {pct(ratio(sps, ref))} |"


def _failure(record: Record) -> str:
    """A short reason for a failed launch."""
    error = record.get("error", "")
    if "Segmentation fault" in error or "signal 11" in error:
        return "crashes (segmentation fault)"
    if "timeout" in error:
        return "hangs (timed out)"
    return "fails"


def recommendations(res: Results, noise: float) -> list[str]:
    """One line per decision, each with the measured evidence."""
    return [_transport(res), _yield(res),
            _judge("`--bind-to none`", "binding each rank to a core (`--bind-to core`)", res.rel(Tuning.BIND_CORE),
                   noise),
            _best_of(res, "**HOROVOD_CYCLE_TIME**", Tuning.CYCLE_GROUP, f"{matrix.DEFAULT_CYCLE_MS} ms", noise,
                     extra=f"; {res.model_name(Tuning.CNN_CYCLE)} at {matrix.swept_setting(Tuning.CNN_CYCLE)} ms: "
                           f"{pct(res.rel(Tuning.CNN_CYCLE, Tuning.CNN_BASELINE))}"),
            _best_of(res, "**HOROVOD_FUSION_THRESHOLD**", Tuning.FUSION_GROUP, f"{matrix.DEFAULT_FUSION_MB} MB", noise),
            _compression(res), _threads(res),
            _judge("the default shared-memory transport", "disabling its single-copy (CMA) path",
                   res.rel(Tuning.VADER_NOCMA), noise)]


def _transport(res: Results) -> str:
    gloo_ops = (pct(res.rel(Tuning.GLOO_OPS)) if res.tuned(Tuning.GLOO_OPS) else
                _failure(res.tuning[Tuning.GLOO_OPS]) if Tuning.GLOO_OPS in res.tuning else "not measured")
    return (f"**Use MPI, not Gloo**: launch with `mpirun` (Horovod's MPI controller and MPI allreduce). "
            f"`horovodrun --gloo` measured {pct(res.rel(Tuning.HOROVODRUN_GLOO))} "
            f"({res.model_name(Tuning.HOROVODRUN_GLOO)}) and {pct(res.rel(Tuning.CNN_GLOO, Tuning.CNN_BASELINE))} "
            f"({res.model_name(Tuning.CNN_GLOO)}); Gloo collectives under mpirun (`HOROVOD_CPU_OPERATIONS=gloo`): "
            f"{gloo_ops}.")


def _yield(res: Results) -> str:
    return ("**Always pass `--mca mpi_yield_when_idle 1`** when the workers' threads fill the cores (with one "
            "thread pool of cores / local workers per worker, that is every CPU job, not only when "
            f"np ≥ cores): without it MPI busy-polls; {pct(res.rel(Tuning.NO_YIELD))} on the "
            f"{res.model_name(Tuning.NO_YIELD)}, {pct(res.rel(Tuning.CNN_NO_YIELD, Tuning.CNN_BASELINE))} on the "
            f"{res.model_name(Tuning.CNN_NO_YIELD)}.")


def _compression(res: Results) -> str:
    return ("**No fp16 compression on CPU**: casting to and from float16 costs more CPU than the halved "
            f"bytes save; MPI {pct(res.rel(Tuning.FP16_MPI))}, Gloo "
            f"{pct(res.rel(Tuning.FP16_GLOO, Tuning.HOROVODRUN_GLOO))} (vs Gloo without compression). "
            "Keep `compression=\"none\"` the default.")


def _threads(res: Results) -> str:
    case, one = res.case(Tuning.THREADS), res.case(Tuning.ONE_PROCESS)
    on_cores = f" on {res.cores} cores" if res.cores else ""
    return (f"**Threads per worker = cores / local workers, never more**: {case['threads']} threads per worker"
            f"{on_cores} {pct(res.rel(Tuning.THREADS))}. For reference, 1 process × {one['threads']} threads "
            f"without Horovod: {pct(res.rel(Tuning.ONE_PROCESS))} vs {workers(res.case(Tuning.BASELINE)['np'])} on "
            f"the {res.model_name(Tuning.ONE_PROCESS)}, {pct(res.rel(Tuning.CNN_ONE_PROCESS, Tuning.CNN_BASELINE))} "
            f"on the {res.model_name(Tuning.CNN_ONE_PROCESS)}.")


def _judge(keep: str, alternative: str, rel: float | None, noise: float) -> str:
    """Keep a default unless the alternative beat it by more than the noise."""
    if rel is None:
        return f"Keep {keep} (the alternative, {alternative}, was not measured)."
    if rel > 1 + noise:
        return f"Prefer {alternative} over {keep}: {pct(rel)}."
    return f"Keep {keep}: {alternative} measured {pct(rel)}" + (" (within noise)." if abs(rel - 1) <= noise else ".")


def _best_of(res: Results, name: str, group: str, default: str, noise: float, extra: str = "") -> str:
    """Keep Horovod's default for a swept setting unless one value clearly beat it."""
    cases = res.swept(group)
    if not cases:
        return f"{name}: not measured."
    parts = ", ".join(f"{matrix.swept_setting(r['key'])}: {pct(res.rel(r['key']))}" for r in cases)
    best = max(cases, key=lambda r: r["samples_per_sec"])
    rel = res.rel(best["key"]) or 1.0
    if rel > 1 + CLEAR_WIN * noise:  # changing a default needs a clear win, not a noise-sized one
        verdict = f"set {best['label'].split(' (')[0]} ({pct(rel)})"
    else:
        verdict = (f"keep Horovod's default ({default}); no setting beat it clearly (by more than {CLEAR_WIN}× "
                   "the noise)")
    return f"{name}: {verdict}. Measured {parts}{extra}."
