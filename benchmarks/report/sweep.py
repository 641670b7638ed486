"""The mechanisms behind the settings sweep, with the numbers of the "Fast defaults" table."""
from __future__ import annotations

import itertools
import math

from benchmarks import matrix
from benchmarks.common import parameter_shapes
from benchmarks.matrix import Tuning
from benchmarks.report.results import CLEAR_WIN, Results
from benchmarks.report.text import change, count, fmt, ms, name, pct, word

#: The fusion sentence names the fewest largest gradient tensors that carry at least this share of the bytes.
MOST_BYTES = 0.95


def mechanisms(res: Results) -> list[str]:
    """One bullet per swept setting that ran: what it does and what it changed."""
    if not res.tuned(Tuning.BASELINE):
        return []
    noise = res.noise()
    out = [sentence for sentence in (_yield_sentence(res, noise), _cycle_sentence(res, noise),
                                     _fusion_sentence(res, noise), _fp16_sentence(res, noise),
                                     _threads_sentence(res, noise)) if sentence]
    return [*out, ""] if out else []


def _phase(res: Results, key: str, phase: str) -> float | None:
    return (res.tuning.get(key, {}).get("phases_ms") or {}).get(phase)


def _yield_sentence(res: Results, noise: float) -> str | None:
    fb, fb_spin = _phase(res, Tuning.BASELINE, "fwd_bwd"), _phase(res, Tuning.NO_YIELD, "fwd_bwd")
    if not (fb and fb_spin):
        return None
    return (f"- **mpi_yield_when_idle.** Without it Open MPI busy-polls while a rank waits in a collective "
            f"(Horovod's background thread waits in one every cycle), burning {_polled_core(res)}: "
            f"forward+backward takes {ms(fb_spin)} ms instead of {ms(fb)} ms and the job "
            f"is {change(res.rel(Tuning.NO_YIELD), noise)} ({res.model_name(Tuning.CNN_NO_YIELD)}: "
            f"{change(res.rel(Tuning.CNN_NO_YIELD, Tuning.CNN_BASELINE), noise)}).")


def _fills_cores(res: Results, key: str) -> bool:
    """Whether the workers of tuning case ``key`` leave no core idle."""
    case = res.case(key)
    return res.cores_busy(case.get("np", 0), case.get("threads", 1))


def _polled_core(res: Results) -> str:
    """Whose core the busy-polling takes: another rank's when the workers fill the machine."""
    if not _fills_cores(res, Tuning.BASELINE):
        return "a core"
    if res.case(Tuning.BASELINE)["np"] == 2:
        return "the core the other rank computes on"
    return "cores the other ranks compute on"


def _cycle_sentence(res: Results, noise: float) -> str | None:
    cycles = sorted((float(matrix.swept_setting(r["key"])), r["key"]) for r in res.swept(Tuning.CYCLE_GROUP))
    if not cycles:
        return None
    detail = ", ".join(f"{cycle:g} ms {change(res.rel(key), noise)}" for cycle, key in cycles)
    return ("- **Cycle time.** Horovod's background thread wakes every HOROVOD_CYCLE_TIME to negotiate "
            "and launch ready allreduces. Shorter cycles negotiate more often (CPU taken from compute); "
            f"longer ones add up to a cycle of latency to every step's allreduces. Against the "
            f"{matrix.DEFAULT_CYCLE_MS} ms default: {detail}.")


def _fusion_sentence(res: Results, noise: float) -> str | None:
    fusions = res.swept(Tuning.FUSION_GROUP)
    if not fusions:
        return None
    detail = ", ".join(f"{matrix.swept_setting(r['key']).replace('mb', ' MiB')} {change(res.rel(r['key']), noise)}"
                       for r in fusions)
    flat = all(abs((res.rel(r["key"]) or 1.0) - 1) <= CLEAR_WIN * noise for r in fusions)
    why = f"It barely matters here: {_few_tensors(fusions[0]['model'])}" if flat else ""
    return (f"- **Tensor fusion.** The {matrix.DEFAULT_FUSION_MB} MiB default fuses all gradients that are ready "
            "in a cycle into one allreduce; a smaller threshold splits them into more allreduces, each paying a "
            f"negotiation: {detail}. {why}")


def _few_tensors(model: str) -> str:
    """How many gradient tensors ``model`` has, and how few of them carry nearly all the bytes."""
    shapes = sorted(parameter_shapes(model), key=math.prod, reverse=True)
    carried = list(itertools.accumulate(math.prod(s) for s in shapes))  # by the n largest tensors
    top = next(n for n, part in enumerate(carried, 1) if part >= MOST_BYTES * carried[-1])
    share = math.floor(100 * carried[top - 1] / carried[-1])
    if all(len(s) == 2 for s in shapes[:top]):
        carry = "one weight matrix carries" if top == 1 else f"the {word(top)} weight matrices carry"
    else:
        carry = "the largest carries" if top == 1 else f"the {word(top)} largest carry"
    return (f"the {name(model)} has only {word(len(shapes))} gradient tensors, and {carry} {share}% of the "
            "bytes.")


def _fp16_sentence(res: Results, noise: float) -> str | None:
    if not res.tuned(Tuning.FP16_MPI):
        return None
    cores = f"the same {count(res.cores, 'core')}" if _fills_cores(res, Tuning.FP16_MPI) else "the CPU"
    return ("- **fp16 compression.** It halves the bytes but casts every gradient to float16 and back on "
            f"{cores}, and over shared memory bandwidth is not what limits the step. MPI: "
            f"{change(res.rel(Tuning.FP16_MPI), noise)}; Gloo: "
            f"{change(res.rel(Tuning.FP16_GLOO, Tuning.HOROVODRUN_GLOO), noise)} than Gloo in float32 (its "
            "float16 sum is much slower than its float32 one).")


def _threads_sentence(res: Results, noise: float) -> str | None:
    if not res.tuned(Tuning.THREADS):
        return None
    case, one = res.case(Tuning.THREADS), res.case(Tuning.ONE_PROCESS)
    on_cores = f" on {res.cores} cores" if res.cores else ""
    cnn_one = res.tuned(Tuning.CNN_ONE_PROCESS)
    return (f"- **Threads.** {word(case['threads']).capitalize()} intra-op threads per worker put "
            f"{case['threads'] * case['np']} busy threads{on_cores}: {change(res.rel(Tuning.THREADS), noise)}. "
            f"One process with {one['threads']} threads and no Horovod trains {fmt(res.tuned(Tuning.ONE_PROCESS))} "
            f"samples/s on the {res.model_name(Tuning.ONE_PROCESS)} ({pct(res.rel(Tuning.ONE_PROCESS))} vs "
            f"{res.case(Tuning.BASELINE)['np']} Horovod workers)"
            + (f" and {fmt(cnn_one)} on the {res.model_name(Tuning.CNN_ONE_PROCESS)} "
               f"({pct(res.rel(Tuning.CNN_ONE_PROCESS, Tuning.CNN_BASELINE))})" if cnn_one else "")
            + ": on a single small host, data parallelism pays only where the model's own threading "
            "scales worse than the allreduce costs.")
