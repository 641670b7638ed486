"""Sentences computed from the measurements: compute, communication, transports and hvdtrain's overhead."""
from __future__ import annotations

from benchmarks import matrix
from benchmarks.common import parameter_count
from benchmarks.matrix import ALLREDUCE_HVD_GLOO, ALLREDUCE_HVD_MPI, ALLREDUCE_MPI4PY, ALLREDUCE_TORCH_GLOO
from benchmarks.report import sweep
from benchmarks.report.results import Record, Results
from benchmarks.report.text import NOISE_FLOOR, fmt, mib, ms, pct, ratio, size, title

#: Above this share of the step, communication is called the main loss of scaling efficiency.
MAIN_LOSS = 0.1


def where_time_goes(res: Results, nps: list[int]) -> list[str]:
    """The "Where the time goes" section, at the largest worker count."""
    np = max(nps)
    lines = ["## Where the time goes", ""]
    for model in res.data["models"]:
        lines += _model_analysis(res, model, np)
    return lines + _transport_analysis(res) + sweep.mechanisms(res) + _hvdtrain_analysis(res, np)


def _model_analysis(res: Results, model: str, np: int) -> list[str]:
    """Compute, phases, communication and scaling efficiency of the raw Horovod loop on ``model``."""
    ceiling = res.throughput.get((matrix.TORCH_CEILING.key, model, np))
    hvd = res.throughput.get((matrix.TORCH_HVD_MPI.key, model, np))
    if not (ceiling and hvd and ceiling.get("status") == hvd.get("status") == "ok"):
        return []
    grad = 4 * parameter_count(model)
    out = [f"**{title(model)}** ({mib(grad)} of gradients per step):", ""]
    single = res.sps(matrix.TORCH_CEILING.key, model, 1)
    if single and ceiling.get("per_process"):
        out.append(_compute_sentence(ceiling, single, np))
    cp, hp = ceiling.get("phases_ms") or {}, hvd.get("phases_ms") or {}
    if cp and hp:
        out.append(_phase_sentence(cp, hp))
        out += _communication_sentence(res, grad, cp, hp)
    return [*out, _efficiency_sentence(res, model, np, hvd, ceiling), ""]


def _compute_sentence(ceiling: Record, single: float, np: int) -> str:
    per_proc = ceiling["per_process"]
    each = sum(per_proc) / len(per_proc)
    shared = (f"{pct(each / single)} per worker from sharing memory bandwidth and caches"
              if abs(each / single - 1) > NOISE_FLOOR else "the same per worker within noise")
    return (f"- Compute: one worker alone trains {single:,.0f} samples/s; {np} independent workers "
            f"manage {each:,.0f} each ({shared}), {ceiling['samples_per_sec']:,.0f} together. That sum "
            "is the ceiling.")


def _phase_sentence(cp: dict[str, float], hp: dict[str, float]) -> str:
    """Compare the per-step phases of the ceiling (cp) and raw Horovod over MPI (hp)."""
    ctotal, htotal = sum(cp.values()), sum(hp.values())
    grow = hp.get("fwd_bwd", 0.0) - cp.get("fwd_bwd", 0.0)
    text = (f"- Raw Horovod over MPI: {ms(htotal)} ms per step against {ms(ctotal)} ms without communication "
            f"(+{ms(htotal - ctotal)} ms). ")
    if grow > 0.05 * cp.get("fwd_bwd", 1.0):
        text += (f"Forward+backward grows by {ms(grow)} ms, because allreduces already run on Horovod's "
                 "background thread during backward and take CPU from it; ")
    else:
        text += "Forward+backward is as fast as without communication; "
    return text + (f"waiting for the remaining allreduce adds {ms(hp.get('allreduce_wait', 0.0))} ms and the "
                   f"optimizer step takes {ms(hp.get('step', 0.0))} ms (vs {ms(cp.get('step', 0.0))}).")


def _communication_sentence(res: Results, grad: int, cp: dict[str, float], hp: dict[str, float]) -> list[str]:
    """A standalone allreduce of all gradients against what communication adds to a training step."""
    mpi_ms, gloo_ms = res.allreduce_ms(ALLREDUCE_HVD_MPI.key, grad), res.allreduce_ms(ALLREDUCE_HVD_GLOO.key, grad)
    if not mpi_ms:
        return []
    step = sum(hp.values())
    overhead = max(step - sum(cp.values()), 0.0)
    return [f"- Communication: a standalone allreduce of all {mib(grad)} takes about {ms(mpi_ms)} ms over "
            "MPI" + (f" and {ms(gloo_ms)} ms over Horovod's Gloo" if gloo_ms else "")
            + ", interpolated from the allreduce table. In training, communication adds "
            f"{ms(overhead)} ms to each step: {100 * overhead / step:.0f}% of the step, "
            + ("the main loss of scaling efficiency." if overhead / step > MAIN_LOSS else "so compute dominates.")]


def _efficiency_sentence(res: Results, model: str, np: int, hvd: Record, ceiling: Record) -> str:
    top = ceiling["samples_per_sec"]
    ddp = res.sps(matrix.TORCH_DDP.key, model, np)
    gloo = res.sps(matrix.TORCH_HVD_GLOO.key, model, np)
    return (f"- Scaling efficiency (fraction of the ceiling): raw Horovod/MPI "
            f"{fmt(100 * ratio(hvd['samples_per_sec'], top), '.0f', '%')}"
            + (f", DDP {fmt(100 * ddp / top, '.0f', '%')}" if ddp else "")
            + (f", raw Horovod/Gloo {fmt(100 * gloo / top, '.0f', '%')}" if gloo else "") + ".")


def _transport_analysis(res: Results) -> list[str]:
    """Gloo against MPI at the largest size both measured, and Horovod's latency at the smallest."""
    sizes = [{row["bytes"] for row in res.allreduce.get(case.key, {}).get("rows", [])}
             for case in (ALLREDUCE_HVD_MPI, ALLREDUCE_HVD_GLOO)]
    common = sorted(sizes[0] & sizes[1])
    if not common:
        return []
    out = [_gloo_vs_mpi(res, common[-1]), *_latency(res, common[0])]
    return [*out, ""]


def _gloo_vs_mpi(res: Results, big: int) -> str:
    mpi, gloo = res.allreduce_ms(ALLREDUCE_HVD_MPI.key, big), res.allreduce_ms(ALLREDUCE_HVD_GLOO.key, big)
    torch_gloo, raw = res.allreduce_ms(ALLREDUCE_TORCH_GLOO.key, big), res.allreduce_ms(ALLREDUCE_MPI4PY.key, big)
    return (f"- **Gloo vs MPI.** At {size(big)} Horovod's allreduce takes {ms(mpi)} ms over MPI "
            f"(shared memory) and {ms(gloo)} ms over Gloo (TCP over loopback), {gloo / mpi:.1f}× the time"
            + (f"; torch.distributed's Gloo needs {ms(torch_gloo)} ms" if torch_gloo else "")
            + (f"; plain MPI (mpi4py) {ms(raw)} ms" if raw else "") + ".")


def _latency(res: Results, small: int) -> list[str]:
    raw = res.allreduce_ms(ALLREDUCE_MPI4PY.key, small)
    if not raw:
        return []
    hvd = res.allreduce_ms(ALLREDUCE_HVD_MPI.key, small)
    return [f"- **Latency.** A {size(small)} allreduce costs {1000 * raw:.0f} µs in plain MPI but "
            f"{hvd:.2f} ms through Horovod: a request waits for the background thread's next cycle "
            f"(HOROVOD_CYCLE_TIME, {matrix.DEFAULT_CYCLE_MS} ms by default) and a negotiation round before it "
            "runs. Every allreduce up to a few MB costs about one cycle, so per-step metric allreduces and "
            "small models pay it on every step."]


def _hvdtrain_analysis(res: Results, np: int) -> list[str]:
    """How hvdtrain's Trainer, launcher and Keras fit compare with the raw loops."""
    out = [f"- **hvdtrain, {title(model)}**: " + "; ".join(parts) + "."
           for model in res.data["models"] if (parts := _hvdtrain_parts(res, model, np))]
    if not out:
        return []
    out.append("  The Trainer's per-step extras are its callback hooks and per-batch bookkeeping (loss and "
               "metric sums); any extra collective per step costs at least one Horovod cycle (see Latency).")
    return [*out, ""]


def _hvdtrain_parts(res: Results, model: str, np: int) -> list[str]:
    raw, raw_tf = res.sps(matrix.TORCH_HVD_MPI.key, model, np), res.sps(matrix.TF_HVD_MPI.key, model, np)
    trainer = res.sps(matrix.HVDTRAIN_TORCH_MPI.key, model, np)
    default = res.sps(matrix.HVDTRAIN_TORCH.key, model, np)
    keras = res.sps(matrix.HVDTRAIN_KERAS_MPI.key, model, np) or res.sps(matrix.HVDTRAIN_KERAS.key, model, np)
    parts = []
    if trainer and raw:
        parts.append(f"the Trainer under the same mpirun runs at {100 * trainer / raw:.0f}% of the raw loop")
    if default and trainer:
        parts.append(f"`hvdtrain run`'s default launch gives {pct(default / trainer)} vs that mpirun")
    if keras and raw_tf:
        parts.append(f"Keras fit through hvdtrain reaches {100 * keras / raw_tf:.0f}% of the raw grouped_allreduce "
                     "loop")
    return parts
