"""Turn the benchmark results into docs/performance.md and docs/performance.png.

Every number in the report, the analysis sentences included, is computed
from the results JSON, so re-running the benchmark rewrites the text too.
"""
from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Any

from benchmarks import matrix
from benchmarks.common import parameter_count

Record = dict[str, Any]

MODEL_TITLES = {"mlp": "MLP 784-2048-2048-10", "cnn": "CNN (2 conv + 2 fc) on 1x28x28",
                "tiny-mlp": "tiny MLP 784-64-64-10", "tiny-cnn": "tiny CNN (4/8 channels)"}


# ---------------------------------------------------------------- lookups

class Results:
    """Indexed access to one results JSON."""

    def __init__(self, data: dict[str, Any]) -> None:
        self.data = data
        self.throughput = {(r["key"], r["model"], r["np"]): r for r in data.get("throughput", [])}
        self.tuning = {r["key"]: r for r in data.get("tuning", [])}
        self.allreduce = {r["key"]: r for r in data.get("allreduce", []) if r.get("status") == "ok"}

    def sps(self, key: str, model: str, np: int) -> float | None:
        """Global samples/s of a throughput record, if it ran."""
        record = self.throughput.get((key, model, np))
        return record.get("samples_per_sec") if record and record.get("status") == "ok" else None

    def tuned(self, key: str) -> float | None:
        """Global samples/s of a tuning record, if it ran."""
        record = self.tuning.get(key)
        return record.get("samples_per_sec") if record and record.get("status") == "ok" else None

    def allreduce_ms(self, key: str, nbytes: float) -> float | None:
        """Allreduce time of ``nbytes`` for one implementation, interpolated log-log."""
        rows = sorted(self.allreduce.get(key, {}).get("rows", []), key=lambda r: r["bytes"])
        if not rows:
            return None
        if nbytes <= rows[0]["bytes"]:
            return rows[0]["median_ms"]
        for lo, hi in itertools.pairwise(rows):
            if lo["bytes"] <= nbytes <= hi["bytes"]:
                frac = math.log(nbytes / lo["bytes"]) / math.log(hi["bytes"] / lo["bytes"])
                return math.exp(math.log(lo["median_ms"]) * (1 - frac) + math.log(hi["median_ms"]) * frac)
        last = rows[-1]
        return last["median_ms"] * nbytes / last["bytes"]


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a and b else None


def _fmt(value: float | None, spec: str = ",.0f", suffix: str = "") -> str:
    return "n/a" if value is None else f"{value:{spec}}{suffix}"


def _pct(ratio: float | None) -> str:
    """A relative change, e.g. +12% or -8%."""
    return "n/a" if ratio is None else f"{(ratio - 1) * 100:+.0f}%"


def _mb(nbytes: float) -> str:
    return f"{nbytes / (1 << 20):.1f} MiB" if nbytes >= 1 << 20 else f"{nbytes / 1024:.0f} KiB"


def _size(nbytes: int) -> str:
    return f"{nbytes >> 20} MiB" if nbytes >= 1 << 20 else f"{nbytes >> 10} KiB"


# ---------------------------------------------------------------- sections

def machine_section(data: dict[str, Any]) -> list[str]:
    m = data["machine"]
    return [
        "## Machine and software", "",
        f"- CPU: {m['cpu']}, {m['cores']} cores ({', '.join(m.get('cpu_flags', [])) or 'flags unknown'}), "
        f"{m.get('memory_gib')} GiB memory, Linux {m.get('kernel')}, no GPU",
        f"- Python {m['python']}, PyTorch {m['torch']}, TensorFlow {m['tensorflow']} (Keras {m['keras']}), "
        f"Horovod {m['horovod']}, {m['open_mpi']}, mpi4py {m['mpi4py']}",
        f"- Run started {data.get('started')}, took {data.get('duration_s', 0) / 60:.1f} minutes",
        "",
    ]


def method_section(data: dict[str, Any]) -> list[str]:
    steps = data["steps"]
    models = ", ".join(f"{MODEL_TITLES.get(m, m)} ({parameter_count(m) / 1e6:.2f} M parameters, "
                       f"{_mb(4 * parameter_count(m))} of float32 gradients)" for m in data["models"])
    windows = "; ".join(f"{m}: {s['warmup']} warmup steps, then {s['repeats']} windows of {s['steps']} steps"
                        for m, s in steps.items())
    return [
        "## Method", "",
        f"- Models: {models}.",
        f"- Batch 128 per worker, SGD with momentum 0.9, cross-entropy; synthetic data with a fixed seed "
        f"({data['samples_per_rank']} samples per worker, labels from a fixed random linear teacher, so "
        "the loss falls). PyTorch and Keras train the same architectures on the same data.",
        "- One intra-op thread per worker (`torch.set_num_threads(1)`; TF intra-op and inter-op 1; "
        "`OMP_NUM_THREADS=1`).",
        f"- {windows}. Each figure is the median window; throughput is global (all workers).",
        "- Configurations run one after another. Before each launch the driver waits for the machine to be "
        "idle; it measures CPU used by other processes during each launch, repeats a launch once if that "
        "exceeded 0.25 cores, and marks figures still disturbed with a dagger (†).",
        *_remeasured_lines(data),
        "- The ceiling is N independent processes running the same loop with no communication, lined up by "
        "a file barrier after warmup and kept busy until all have finished timing; its throughput is the sum.",
        "",
    ]


def _remeasured_lines(data: dict[str, Any]) -> list[str]:
    """Say which records were measured again after the main run, and how."""
    lines = []
    for update in data.get("remeasured", []):
        keys = sorted({f"{r['key']}" + (f" ({r['model']})" if r.get("model") and r.get("kind") != "tuning" else "")
                       for section in ("throughput", "allreduce", "tuning") for r in data.get(section, [])
                       if r.get("remeasured") == update["started"]})
        lines.append(f"- Measured again at {update['started']}, after the main run, with "
                     f"`{update['command']}`; these rows come from that run: {', '.join(keys)}.")
    return lines


def commands_section(data: dict[str, Any]) -> list[str]:
    lines = ["### Launch commands (2 workers)", "", "| variant | command |", "|---|---|"]
    seen = set()
    for record in data.get("throughput", []):
        if record["np"] != max(data["nps"]) or record["key"] in seen or "command" not in record:
            continue
        seen.add(record["key"])
        lines.append(f"| {record['label']} | `{record['command']}` |")
    return [*lines, ""]


def throughput_table(res: Results, model: str, nps: list[int]) -> list[str]:
    lines = [f"### {MODEL_TITLES.get(model, model)}", "",
             "| workers | variant | samples/s | × DDP | × raw Horovod | % of ceiling | vs 1 worker | step ms |",
             "|---:|---|---:|---:|---:|---:|---:|---:|"]
    for np in nps:
        for variant in matrix.VARIANTS:
            record = res.throughput.get((variant.key, model, np))
            if record is None:
                continue
            lines.append(_throughput_row(res, record, variant, model, np))
    return [*lines, ""]


def _throughput_row(res: Results, record: Record, variant: matrix.Variant, model: str, np: int) -> str:
    if record.get("status") != "ok":
        return f"| {np} | {variant.label} | {record.get('status', 'failed').split(':')[0]} | | | | | |"
    sps = record["samples_per_sec"]
    ceiling = res.sps(matrix.CEILING[variant.framework], model, np)
    single = res.sps(variant.key, model, 1) if np > 1 else None
    dagger = " †" if record.get("noisy") else ""
    step = record.get("step_ms")
    vs_ddp = _ratio(sps, res.sps(matrix.DDP, model, np))
    vs_hvd = _ratio(sps, res.sps(matrix.RAW_HOROVOD[variant.framework], model, np))
    return (f"| {np} | {variant.label} | {sps:,.0f}{dagger} | {_fmt(vs_ddp, '.2f')} | {_fmt(vs_hvd, '.2f')}"
            f" | {_fmt(100 * _ratio(sps, ceiling) if ceiling else None, '.0f', '%')}"
            f" | {_fmt(_ratio(sps, single), '.2f', '×')} | {_fmt(step, '.1f')} |")


def unavailable_note(res: Results) -> list[str]:
    missing = sorted({(r["label"], r["status"]) for r in res.throughput.values()
                      if r.get("status", "").startswith("not available")})
    if not missing:
        return []
    return ["Not measured in this run: " + "; ".join(f"{label} ({status})" for label, status in missing) + ".",
            ""]


def phases_table(res: Results, model: str, np: int) -> list[str]:
    keys = ("torch-ceiling", "torch-hvd-mpi", "torch-hvd-gloo", "torch-ddp")
    rows = [(k, res.throughput.get((k, model, np))) for k in keys]
    rows = [(k, r) for k, r in rows if r and r.get("status") == "ok" and r.get("phases_ms")]
    if not rows:
        return []
    lines = [f"Per-step time on rank 0, {MODEL_TITLES.get(model, model)}, {np} workers (ms; DDP's allreduce "
             "happens inside backward):", "",
             "| variant | data | forward+backward | wait for allreduce | optimizer step | total |",
             "|---|---:|---:|---:|---:|---:|"]
    for _, r in rows:
        p = r["phases_ms"]
        total = sum(p.values())
        lines.append(f"| {r['label']} | {p.get('data', 0):.1f} | {p.get('fwd_bwd', 0):.1f} | "
                     f"{_fmt(p.get('allreduce_wait'), '.1f')} | {p.get('step', 0):.1f} | {total:.1f} |")
    return [*lines, ""]


def allreduce_section(res: Results) -> list[str]:
    cases = [c for c in matrix.ALLREDUCE_CASES if c.key in res.allreduce]
    if not cases:
        return []
    sizes = sorted({row["bytes"] for c in cases for row in res.allreduce[c.key]["rows"]})
    header = "| size | " + " | ".join(c.label for c in cases) + " |"
    lines = ["## Allreduce latency and bandwidth (2 workers)", "",
             "Median time of one in-place float32 sum allreduce, and algorithm bandwidth (bytes / time; "
             "for 2 workers the ring bus bandwidth is the same number).", "", header,
             "|---:|" + "---:|" * len(cases)]
    for nbytes in sizes:
        cells = []
        for case in cases:
            row = next((r for r in res.allreduce[case.key]["rows"] if r["bytes"] == nbytes), None)
            cells.append("n/a" if row is None else f"{row['median_ms']:.3g} ms, {row['algbw_gbps']:.2f} GB/s")
        lines.append(f"| {_size(nbytes)} | " + " | ".join(cells) + " |")
    return [*lines, ""]


# ---------------------------------------------------------------- analysis

def where_time_goes(res: Results, nps: list[int]) -> list[str]:
    """Sentences computed from the measurements: compute, communication, contention."""
    np = max(nps)
    lines = ["## Where the time goes", ""]
    for model in res.data["models"]:
        lines += _model_analysis(res, model, np)
    lines += _transport_analysis(res) + _tuning_analysis(res) + _hvdtrain_analysis(res, np)
    return lines


def _change(rel: float | None, noise: float = 0.03) -> str:
    """``rel`` (new/old) in words: "12% slower", "5% faster" or "no measurable change"."""
    if rel is None:
        return "not measured"
    if abs(rel - 1) <= noise:
        return f"no measurable change ({_pct(rel)})"
    return f"{abs(rel - 1) * 100:.0f}% {'faster' if rel > 1 else 'slower'}"


def _phase(res: Results, key: str, phase: str) -> float | None:
    return (res.tuning.get(key, {}).get("phases_ms") or {}).get(phase)


def _tuning_analysis(res: Results) -> list[str]:
    """Mechanisms behind the settings sweep (numbers from the "Fast defaults" table)."""
    if not res.tuned("baseline"):
        return []
    noise = _noise(res)
    out = []
    fb, fb_spin = _phase(res, "baseline", "fwd_bwd"), _phase(res, "no-yield", "fwd_bwd")
    if fb and fb_spin:
        out.append(f"- **mpi_yield_when_idle.** Without it Open MPI busy-polls while a rank waits in a collective "
                   f"(Horovod's background thread waits in one every cycle), burning the core the other rank "
                   f"computes on: forward+backward takes {_ms(fb_spin)} ms instead of {_ms(fb)} ms and the job "
                   f"is {_change(_rel(res, 'no-yield'), noise)} (CNN: "
                   f"{_change(_rel(res, 'cnn-no-yield', 'cnn-baseline'), noise)}).")
    cycles = sorted((float(r["key"].split("-", 1)[1]), r["key"]) for r in res.data.get("tuning", [])
                    if r.get("group") == "cycle" and r.get("status") == "ok")
    if cycles:
        detail = ", ".join(f"{ms:g} ms {_change(_rel(res, key), noise)}" for ms, key in cycles)
        out.append("- **Cycle time.** Horovod's background thread wakes every HOROVOD_CYCLE_TIME to negotiate "
                   "and launch ready allreduces. Shorter cycles negotiate more often (CPU taken from compute); "
                   "longer ones add up to a cycle of latency to every step's allreduces. Against the 1 ms "
                   f"default: {detail}.")
    fusions = [r for r in res.data.get("tuning", []) if r.get("group") == "fusion" and r.get("status") == "ok"]
    if fusions:
        detail = ", ".join(f"{r['key'].split('-', 1)[1].replace('mb', ' MiB')} {_change(_rel(res, r['key']), noise)}"
                           for r in fusions)
        flat = all(abs((_rel(res, r["key"]) or 1.0) - 1) <= 2 * noise for r in fusions)
        out.append("- **Tensor fusion.** The 128 MiB default fuses all gradients that are ready in a cycle into "
                   "one allreduce; a smaller threshold splits them into more allreduces, each paying a "
                   f"negotiation: {detail}. "
                   + ("It barely matters here: the MLP has only six gradient tensors, and the two weight matrices "
                      "carry 99% of the bytes." if flat else ""))
    if res.tuned("fp16-mpi"):
        out.append("- **fp16 compression.** It halves the bytes but casts every gradient to float16 and back on "
                   "the same two cores, and over shared memory bandwidth is not what limits the step. MPI: "
                   f"{_change(_rel(res, 'fp16-mpi'), noise)}; Gloo: "
                   f"{_change(_rel(res, 'fp16-gloo', 'horovodrun-gloo'), noise)} than Gloo in float32 (its float16 "
                   "sum is much slower than its float32 one).")
    if res.tuned("threads-2"):
        one = res.tuned("one-proc-2-threads")
        cnn_one = res.tuned("cnn-one-proc-2-threads")
        out.append(f"- **Threads.** Two intra-op threads per worker put 4 busy threads on 2 cores: "
                   f"{_change(_rel(res, 'threads-2'), noise)}. One process with 2 threads and no Horovod trains "
                   f"{_fmt(one)} samples/s on the MLP ({_pct(_rel(res, 'one-proc-2-threads'))} vs 2 Horovod "
                   "workers)" + (f" and {_fmt(cnn_one)} on the CNN "
                                 f"({_pct(_rel(res, 'cnn-one-proc-2-threads', 'cnn-baseline'))})" if cnn_one else "")
                   + ": on a single small host, data parallelism pays only where the model's own threading "
                   "scales worse than the allreduce costs.")
    return [*out, ""] if out else []


def _hvdtrain_analysis(res: Results, np: int) -> list[str]:
    """How hvdtrain's Trainer, launcher and Keras fit compare with the raw loops."""
    out = []
    for model in res.data["models"]:
        raw, raw_tf = res.sps("torch-hvd-mpi", model, np), res.sps("tf-hvd-mpi", model, np)
        parts = []
        trainer, default = res.sps("hvdtrain-torch-mpi", model, np), res.sps("hvdtrain-torch", model, np)
        if trainer and raw:
            parts.append(f"the Trainer under the same mpirun runs at {100 * trainer / raw:.0f}% of the raw loop")
        if default and trainer:
            parts.append(f"`hvdtrain run`'s default launch gives {_pct(default / trainer)} vs that mpirun")
        keras, keras_mpi = res.sps("hvdtrain-keras", model, np), res.sps("hvdtrain-keras-mpi", model, np)
        if (keras_mpi or keras) and raw_tf:
            parts.append(f"Keras fit through hvdtrain reaches {100 * (keras_mpi or keras) / raw_tf:.0f}% of the "
                         "raw grouped_allreduce loop")
        if parts:
            out.append(f"- **hvdtrain, {MODEL_TITLES.get(model, model)}**: " + "; ".join(parts) + ".")
    if out:
        out.append("  The Trainer's per-step extras are its callback hooks and per-batch bookkeeping (loss and "
                   "metric sums); any extra collective per step costs at least one Horovod cycle (see Latency).")
    return [*out, ""] if out else []


def _model_analysis(res: Results, model: str, np: int) -> list[str]:
    title = MODEL_TITLES.get(model, model)
    ceiling = res.throughput.get(("torch-ceiling", model, np))
    hvd = res.throughput.get(("torch-hvd-mpi", model, np))
    if not (ceiling and hvd and ceiling.get("status") == hvd.get("status") == "ok"):
        return []
    grad = 4 * parameter_count(model)
    out = [f"**{title}** ({_mb(grad)} of gradients per step):", ""]
    single = res.sps("torch-ceiling", model, 1)
    per_proc = ceiling.get("per_process") or []
    if single and per_proc:
        each = sum(per_proc) / len(per_proc)
        shared = (f"{_pct(each / single)} per worker from sharing memory bandwidth and caches"
                  if abs(each / single - 1) > 0.03 else "the same per worker within noise")
        out.append(f"- Compute: one worker alone trains {single:,.0f} samples/s; {np} independent workers "
                   f"manage {each:,.0f} each ({shared}), {ceiling['samples_per_sec']:,.0f} together. That sum "
                   "is the ceiling.")
    cp, hp = ceiling.get("phases_ms") or {}, hvd.get("phases_ms") or {}
    if cp and hp:
        out.append(_phase_sentence(cp, hp))
    mpi_ms, gloo_ms = res.allreduce_ms("hvd-mpi", grad), res.allreduce_ms("hvd-gloo", grad)
    if mpi_ms and cp and hp:
        overhead = max(sum(hp.values()) - sum(cp.values()), 0.0)
        out.append(f"- Communication: a standalone allreduce of all {_mb(grad)} takes about {_ms(mpi_ms)} ms over "
                   "MPI" + (f" and {_ms(gloo_ms)} ms over Horovod's Gloo" if gloo_ms else "")
                   + ", interpolated from the allreduce table. In training, communication adds "
                   f"{_ms(overhead)} ms to each step: {100 * overhead / sum(hp.values()):.0f}% of the step, "
                   + ("the main loss of scaling efficiency." if overhead / sum(hp.values()) > 0.1 else
                      "so compute dominates."))
    efficiency = _ratio(hvd["samples_per_sec"], ceiling["samples_per_sec"])
    ddp = res.sps("torch-ddp", model, np)
    gloo = res.sps("torch-hvd-gloo", model, np)
    out.append(f"- Scaling efficiency (fraction of the ceiling): raw Horovod/MPI {_fmt(100 * efficiency, '.0f', '%')}"
               + (f", DDP {_fmt(100 * ddp / ceiling['samples_per_sec'], '.0f', '%')}" if ddp else "")
               + (f", raw Horovod/Gloo {_fmt(100 * gloo / ceiling['samples_per_sec'], '.0f', '%')}" if gloo else "")
               + ".")
    return [*out, ""]


def _phase_sentence(cp: dict[str, float], hp: dict[str, float]) -> str:
    """Compare the per-step phases of the ceiling (cp) and raw Horovod over MPI (hp)."""
    ctotal, htotal = sum(cp.values()), sum(hp.values())
    grow = hp.get("fwd_bwd", 0.0) - cp.get("fwd_bwd", 0.0)
    text = (f"- Raw Horovod over MPI: {_ms(htotal)} ms per step against {_ms(ctotal)} ms without communication "
            f"(+{_ms(htotal - ctotal)} ms). ")
    if grow > 0.05 * cp.get("fwd_bwd", 1.0):
        text += (f"Forward+backward grows by {_ms(grow)} ms, because allreduces already run on Horovod's "
                 "background thread during backward and take CPU from it; ")
    else:
        text += "Forward+backward is as fast as without communication; "
    return text + (f"waiting for the remaining allreduce adds {_ms(hp.get('allreduce_wait', 0.0))} ms and the "
                   f"optimizer step takes {_ms(hp.get('step', 0.0))} ms (vs {_ms(cp.get('step', 0.0))}).")


def _transport_analysis(res: Results) -> list[str]:
    out = []
    sizes = [{row["bytes"] for row in res.allreduce.get(key, {}).get("rows", [])} for key in ("hvd-mpi", "hvd-gloo")]
    common = sorted(sizes[0] & sizes[1])
    if common:
        big = common[-1]
        mpi, gloo = res.allreduce_ms("hvd-mpi", big), res.allreduce_ms("hvd-gloo", big)
        tgloo = res.allreduce_ms("torch-gloo", big) if "torch-gloo" in res.allreduce else None
        raw = res.allreduce_ms("mpi4py", big) if "mpi4py" in res.allreduce else None
        out.append(f"- **Gloo vs MPI.** At {_size(big)} Horovod's allreduce takes {_ms(mpi)} ms over MPI "
                   f"(shared memory) and {_ms(gloo)} ms over Gloo (TCP over loopback), {gloo / mpi:.1f}× the time"
                   + (f"; torch.distributed's Gloo needs {_ms(tgloo)} ms" if tgloo else "")
                   + (f"; plain MPI (mpi4py) {_ms(raw)} ms" if raw else "") + ".")
        small = common[0]
        hmpi = res.allreduce_ms("hvd-mpi", small)
        rmpi = res.allreduce_ms("mpi4py", small) if "mpi4py" in res.allreduce else None
        if rmpi:
            out.append(f"- **Latency.** A {_size(small)} allreduce costs {1000 * rmpi:.0f} µs in plain MPI but "
                       f"{hmpi:.2f} ms through Horovod: a request waits for the background thread's next cycle "
                       "(HOROVOD_CYCLE_TIME, 1 ms by default) and a negotiation round before it runs. Every "
                       "allreduce up to a few MB costs about one cycle, so per-step metric allreduces and "
                       "small models pay it on every step.")
    return [*out, ""] if out else []


def _ms(value: float | None) -> str:
    if value is None:
        return "n/a"
    return f"{value:.1f}" if value < 10 else f"{value:.0f}"


# ---------------------------------------------------------------- fast defaults

def fast_defaults(res: Results) -> list[str]:
    """Recommendations derived from the tuning sweep, then the sweep itself."""
    base = res.tuned("baseline")
    if not base:
        return []
    noise = _noise(res)
    lines = ["## Fast defaults", "",
             f"Raw Horovod PyTorch loop, MLP, 2 workers unless marked CNN; baseline = tuned mpirun "
             f"(`--bind-to none --mca mpi_yield_when_idle 1`, Horovod defaults) at {base:,.0f} samples/s. "
             f"Run-to-run noise on this machine is about ±{100 * noise:.0f}% (the same configuration measured "
             "twice in this run), so smaller differences are not significant.", "",
             "Recommended launch defaults for hvdtrain on CPU hosts like this one:", ""]
    lines += [f"{i}. {text}" for i, text in enumerate(recommendations(res, noise), 1)]
    lines += ["", "| setting | samples/s | vs its baseline |", "|---|---:|---:|"]
    for record in res.data.get("tuning", []):
        ref = res.tuned(record.get("reference") or ("cnn-baseline" if record["model"] == "cnn" else "baseline"))
        if record.get("status") != "ok":
            lines.append(f"| {record['label']} | {_failure(record)} | |")
            continue
        dagger = " †" if record.get("noisy") else ""
        lines.append(f"| {record['label']} | {record['samples_per_sec']:,.0f}{dagger} | "
                     f"{_pct(_ratio(record['samples_per_sec'], ref))} |")
    return [*lines, ""]


def _failure(record: Record) -> str:
    """A short reason for a failed launch."""
    error = record.get("error", "")
    if "Segmentation fault" in error or "signal 11" in error:
        return "crashes (segmentation fault)"
    if "timeout" in error:
        return "hangs (timed out)"
    return "fails"


def _noise(res: Results) -> float:
    """Relative difference between two measurements of the same configuration."""
    a, b = res.tuned("baseline"), res.sps("torch-hvd-mpi", "mlp", 2)
    pairs = [(a, b), (res.tuned("cnn-baseline"), res.sps("torch-hvd-mpi", "cnn", 2))]
    diffs = [abs(x - y) / ((x + y) / 2) for x, y in pairs if x and y]
    return max([0.03, *diffs])


def _rel(res: Results, key: str, ref: str = "baseline") -> float | None:
    return _ratio(res.tuned(key), res.tuned(ref))


def recommendations(res: Results, noise: float) -> list[str]:
    """One line per decision, each with the measured evidence."""
    recs = []
    gloo, cnn_gloo = _rel(res, "horovodrun-gloo"), _rel(res, "cnn-gloo", "cnn-baseline")
    recs.append(f"**Use MPI, not Gloo**: launch with `mpirun` (Horovod's MPI controller and MPI allreduce). "
                f"`horovodrun --gloo` measured {_pct(gloo)} (MLP) and {_pct(cnn_gloo)} (CNN); "
                "Gloo collectives under mpirun (`HOROVOD_CPU_OPERATIONS=gloo`): "
                + (_pct(_rel(res, "gloo-ops")) if res.tuned("gloo-ops") else
                   _failure(res.tuning.get("gloo-ops", {})) if "gloo-ops" in res.tuning else "not measured") + ".")
    recs.append(f"**Always pass `--mca mpi_yield_when_idle 1`** when the workers' threads fill the cores (with one "
                "thread pool of cores / local workers per worker, that is every CPU job, not only when "
                f"np ≥ cores): without it MPI busy-polls; {_pct(_rel(res, 'no-yield'))} on the MLP, "
                f"{_pct(_rel(res, 'cnn-no-yield', 'cnn-baseline'))} on the CNN.")
    recs.append(_judge("`--bind-to none`", "binding each rank to a core (`--bind-to core`)",
                       _rel(res, "bind-core"), noise))
    recs.append(_best_of(res, "**HOROVOD_CYCLE_TIME**", "cycle", "1 ms", noise,
                         extra=f"; CNN at 5 ms: {_pct(_rel(res, 'cnn-cycle-5', 'cnn-baseline'))}"))
    recs.append(_best_of(res, "**HOROVOD_FUSION_THRESHOLD**", "fusion", "128 MB", noise))
    recs.append(f"**No fp16 compression on CPU**: casting to and from float16 costs more CPU than the halved "
                f"bytes save; MPI {_pct(_rel(res, 'fp16-mpi'))}, Gloo "
                f"{_pct(_rel(res, 'fp16-gloo', 'horovodrun-gloo'))} (vs Gloo without compression). "
                "Keep `compression=\"none\"` the default.")
    recs.append(f"**Threads per worker = cores / local workers, never more**: 2 threads per worker on 2 cores "
                f"{_pct(_rel(res, 'threads-2'))}. For reference, 1 process × 2 threads without Horovod: "
                f"{_pct(_rel(res, 'one-proc-2-threads'))} vs 2 workers on the MLP, "
                f"{_pct(_rel(res, 'cnn-one-proc-2-threads', 'cnn-baseline'))} on the CNN.")
    recs.append(_judge("the default shared-memory transport", "disabling its single-copy (CMA) path",
                       _rel(res, "vader-nocma"), noise))
    return recs


def _judge(keep: str, alternative: str, rel: float | None, noise: float) -> str:
    if rel is None:
        return f"Keep {keep} (the alternative, {alternative}, was not measured)."
    if rel > 1 + noise:
        return f"Prefer {alternative} over {keep}: {_pct(rel)}."
    return f"Keep {keep}: {alternative} measured {_pct(rel)}" + (
        " (within noise)." if abs(rel - 1) <= noise else ".")


def _best_of(res: Results, name: str, group: str, default: str, noise: float, extra: str = "") -> str:
    cases = [r for r in res.data.get("tuning", []) if r.get("group") == group and r.get("status") == "ok"]
    if not cases:
        return f"{name}: not measured."
    parts = ", ".join(f"{r['key'].split('-', 1)[1]}: {_pct(_rel(res, r['key']))}" for r in cases)
    best = max(cases, key=lambda r: r["samples_per_sec"])
    rel = _rel(res, best["key"]) or 1.0
    if rel > 1 + 2 * noise:  # changing a default needs a clear win, not a noise-sized one
        verdict = f"set {best['label'].split(' (')[0]} ({_pct(rel)})"
    else:
        verdict = f"keep Horovod's default ({default}); no setting beat it clearly (by more than 2× the noise)"
    return f"{name}: {verdict}. Measured {parts}{extra}."


# ---------------------------------------------------------------- goals

GOALS = (  # (goal, variant, reference, threshold), all at np=2
    ("hvdtrain default >= 1.3x DDP", "hvdtrain-torch", "torch-ddp", 1.3),
    (">= 80% of the no-communication ceiling", "hvdtrain-torch", "torch-ceiling", 0.8),
    ("hvdtrain within 2% of the raw Horovod loop (same mpirun)", "hvdtrain-torch-mpi", "torch-hvd-mpi", 0.98),
    ("Keras fit under hvdtrain >= 0.95x the raw grouped_allreduce loop", "hvdtrain-keras-mpi", "tf-hvd-mpi", 0.95),
)


def goals_section(res: Results, models: list[str], np: int = 2) -> list[str]:
    """The issue's goals against this run's measurements, and why a missed one is missed."""
    lines = ["## Goals", "", f"Ratios at np={np}, from the tables below (noise about ±{100 * _noise(res):.0f}%).", "",
             "| goal | " + " | ".join(MODEL_TITLES.get(m, m) for m in models) + " |",
             "|---|" + "---:|" * len(models)]
    for goal, key, ref, threshold in GOALS:
        cells = []
        for model in models:
            ratio = _ratio(res.sps(key, model, np), res.sps(ref, model, np))
            cells.append("n/a" if ratio is None else f"{ratio:.2f} ({'met' if ratio >= threshold else 'not met'})")
        lines.append(f"| {goal} | " + " | ".join(cells) + " |")
    lines += ["", *_goal_reasons(res, models, np), ""]
    return lines


def _goal_reasons(res: Results, models: list[str], np: int) -> list[str]:
    reasons = []
    for model in models:
        raw = _ratio(res.sps("torch-hvd-mpi", model, np), res.sps("torch-ceiling", model, np))
        ddp = _ratio(res.sps("torch-hvd-mpi", model, np), res.sps("torch-ddp", model, np))
        if raw is None or ddp is None:
            continue
        reasons.append(
            f"- {MODEL_TITLES.get(model, model)}: the raw Horovod loop itself reaches {100 * raw:.0f}% of the ceiling "
            f"and {ddp:.2f}x DDP. hvdtrain runs the same allreduces as that loop, so neither bound can be beaten "
            "by hvdtrain's own code: on 2 cores the allreduce (Horovod's background thread and MPI's copies) runs "
            "on the cores that compute, and there is no idle core or NIC to overlap it with.")
    reasons.append("- What hvdtrain adds per step is measured against the raw loop under the same mpirun: callback "
                   "hooks, the loss/metric sums, and the non-finite-loss flag, which is reduced in the same Horovod "
                   "cycle as the gradients (it is enqueued before backward), so it adds no round trip.")
    return reasons


# ---------------------------------------------------------------- output

def write_markdown(data: dict[str, Any], md_path: Path, png_path: Path) -> None:
    """Write the whole report."""
    res = Results(data)
    nps = data["nps"]
    lines = ["# Performance", "",
             "Throughput of hvdtrain against raw Horovod, PyTorch DDP and the no-communication ceiling, "
             "on the same models and data, measured by `benchmarks/` on the machine below.", "",
             f"Command: {_command(data['command'])}" + (" (quick mode: tiny models, few steps; figures are not "
                                                 "meaningful)" if data.get("quick") else ""), "",
             f"![throughput and allreduce bandwidth]({png_path.name})", ""]
    lines += goals_section(res, data["models"], max(nps)) if max(nps) >= 2 else []
    lines += machine_section(data) + method_section(data)
    lines += ["## Throughput", "",
              "Ratios are to PyTorch DDP and to the raw Horovod loop over MPI (the raw TF loop for Keras rows) "
              "with the same workers; % of ceiling is the scaling efficiency; vs 1 worker is this variant's "
              "speed-up from 1 to 2 workers.", ""]
    for model in data["models"]:
        lines += throughput_table(res, model, nps)
    lines += unavailable_note(res)
    for model in data["models"]:
        lines += phases_table(res, model, max(nps))
    lines += commands_section(data)
    lines += allreduce_section(res) + where_time_goes(res, nps) + fast_defaults(res)
    lines += ["## Reproduce", "", "```", "make bench                                   # this report",
              "python -m benchmarks.run --quick --output-dir /tmp/bench   # < 90 s smoke run",
              "python -m benchmarks.run --models mlp --np 2 --no-tuning   # a subset",
              "python -m benchmarks.run --from-json benchmarks/results/latest.json   # re-render", "```", ""]
    md_path.write_text("\n".join(lines))


def _command(command: str) -> str:
    if command.strip() == "python -m benchmarks.run":
        return "`make bench` (runs `python -m benchmarks.run` with the virtual environment first on PATH)"
    return f"`{command}`"


def write_plot(data: dict[str, Any], png_path: Path) -> None:
    """Bar chart of samples/s per variant per model at the largest np, and allreduce bandwidth."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    res = Results(data)
    np = max(data["nps"])
    fig, (bars, curve) = plt.subplots(1, 2, figsize=(14, 6), gridspec_kw={"width_ratios": [3, 2]})
    _bar_chart(bars, res, data["models"], np)
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
    ax.set_xticks(range(len(models)), [MODEL_TITLES.get(m, m) for m in models])
    ax.set_ylabel("samples/s (all workers)")
    ax.set_title(f"Training throughput, {np} workers, batch 128 each")
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
    ax.set_xticks(ordered, [_size(b) for b in ordered], fontsize=7)
    ax.set_xlabel("message size")
    ax.set_ylabel("allreduce bandwidth (GB/s, log scale)")
    ax.set_title("Allreduce bandwidth, 2 workers")
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=2, frameon=False)
    ax.grid(alpha=0.3, which="both")
