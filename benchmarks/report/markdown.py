"""The whole markdown document: its framing sections, and the others in order."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmarks import matrix
from benchmarks.common import MOMENTUM, parameter_count
from benchmarks.report import analysis, defaults, goals, tables
from benchmarks.report.results import Results
from benchmarks.report.text import mib, title, word

#: How ``make bench`` runs the driver; a run with this command is credited to ``make bench``.
MAKE_BENCH_COMMAND = "python -m benchmarks.run"
REPRODUCE = ["## Reproduce", "", "```", "make bench                                   # this report",
             "python -m benchmarks.run --quick --output-dir /tmp/bench   # < 90 s smoke run",
             "python -m benchmarks.run --models mlp --np 2 --no-tuning   # a subset",
             "python -m benchmarks.run --from-json benchmarks/results/latest.json   # re-render", "```", ""]


def write_markdown(data: dict[str, Any], md_path: Path, png_path: Path) -> None:
    """Write the whole report.

    Args:
        data: the results document (``benchmarks/results/latest.json``).
        md_path: where the markdown goes.
        png_path: the figure the markdown shows (linked by file name).
    """
    res = Results(data)
    nps, models = data["nps"], data["models"]
    lines = _introduction(data, png_path)
    lines += goals.goals_section(res, models, max(nps)) if max(nps) >= 2 else []
    lines += machine_section(data) + method_section(res)
    lines += _throughput_introduction(nps)
    for model in models:
        lines += tables.throughput_table(res, model, nps)
    lines += tables.unavailable_note(res)
    for model in models:
        lines += tables.phases_table(res, model, max(nps))
    lines += tables.commands_section(res, max(nps))
    lines += tables.allreduce_section(res) + analysis.where_time_goes(res, nps) + defaults.fast_defaults(res)
    md_path.write_text("\n".join([*lines, *REPRODUCE]))


def _introduction(data: dict[str, Any], png_path: Path) -> list[str]:
    quick = " (quick mode: tiny models, few steps; figures are not meaningful)" if data.get("quick") else ""
    return ["# Performance", "",
            "Throughput of hvdtrain against raw Horovod, PyTorch DDP and the no-communication ceiling, "
            "on the same models and data, measured by `benchmarks/` on the machine below.", "",
            f"Command: {_command(data['command'])}{quick}", "",
            f"![throughput and allreduce bandwidth]({png_path.name})", ""]


def _command(command: str) -> str:
    if command.strip() == MAKE_BENCH_COMMAND:
        return f"`make bench` (runs `{MAKE_BENCH_COMMAND}` with the virtual environment first on PATH)"
    return f"`{command}`"


def machine_section(data: dict[str, Any]) -> list[str]:
    """CPU, memory, kernel and package versions of the measured machine."""
    m = data["machine"]
    return [
        "## Machine and software", "",
        f"- CPU: {m['cpu']}, {m['cores']} cores ({', '.join(m.get('cpu_flags', [])) or 'flags unknown'}), "
        f"{m.get('memory_gib')} GiB memory, Linux {m.get('kernel')}{_gpus(m)}",
        f"- Python {m['python']}, PyTorch {m['torch']}, TensorFlow {m['tensorflow']} (Keras {m['keras']}), "
        f"Horovod {m['horovod']}, {m['open_mpi']}, mpi4py {m['mpi4py']}",
        f"- Run started {data.get('started')}, took {data.get('duration_s', 0) / 60:.1f} minutes",
        "",
    ]


def _gpus(machine: dict[str, Any]) -> str:
    """", no GPU", the GPUs found, or nothing for results that predate recording them."""
    if "gpus" not in machine:
        return ""
    if not machine["gpus"]:
        return ", no GPU"
    return f", GPU: {', '.join(machine['gpus'])} (unused: the benchmark trains on the CPU)"


def method_section(res: Results) -> list[str]:
    """Models, training setup, threads, timing windows and the noise policy."""
    data = res.data
    windows = "; ".join(f"{m}: {s['warmup']} warmup steps, then {s['repeats']} windows of {s['steps']} steps"
                        for m, s in data["steps"].items())
    return [
        "## Method", "",
        "- Models: " + ", ".join(_model_line(m) for m in data["models"]) + ".",
        f"- {_training_setup(res.shared('throughput', 'batch_size'))}; synthetic data with a fixed seed "
        f"({data['samples_per_rank']} samples per worker, labels from a fixed random linear teacher, so "
        "the loss falls). PyTorch and Keras train the same architectures on the same data.",
        *_threads_line(res.shared("throughput", "threads")),
        f"- {windows}. Each figure is the median window; throughput is global (all workers).",
        "- Configurations run one after another. Before each launch the driver waits for the machine to be "
        "idle; it measures CPU used by other processes during each launch, repeats a launch once if that "
        f"exceeded {matrix.NOISY_CORES:g} cores, and marks figures still disturbed with a dagger (†).",
        *_remeasured_lines(data),
        "- The ceiling is N independent processes running the same loop with no communication, lined up by "
        "a file barrier after warmup and kept busy until all have finished timing; its throughput is the sum.",
        "",
    ]


def _model_line(model: str) -> str:
    params = parameter_count(model)
    return f"{title(model)} ({params / 1e6:.2f} M parameters, {mib(4 * params)} of float32 gradients)"


def _training_setup(batch_size: int | None) -> str:
    batch = f"Batch {batch_size} per worker, " if batch_size else ""
    setup = f"{batch}SGD with momentum {MOMENTUM:g}, cross-entropy"
    return setup[0].upper() + setup[1:]


def _threads_line(threads: int | None) -> list[str]:
    """The thread settings every worker ran with, when they all ran with the same."""
    if not threads:
        return []
    return [f"- {word(threads).capitalize()} intra-op thread{'' if threads == 1 else 's'} per worker "
            f"(`torch.set_num_threads({threads})`; TF intra-op and inter-op {threads}; "
            f"`OMP_NUM_THREADS={threads}`)."]


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


def _throughput_introduction(nps: list[int]) -> list[str]:
    scaled = " or ".join(str(np) for np in nps if np > 1)
    speed_up = f"; vs 1 worker is this variant's speed-up from 1 to {scaled} workers" if scaled else ""
    return ["## Throughput", "",
            "Ratios are to PyTorch DDP and to the raw Horovod loop over MPI (the raw TF loop for Keras rows) "
            f"with the same workers; % of ceiling is the scaling efficiency{speed_up}.", ""]
