"""What the benchmark runs: the compared variants, the workloads and the tuning sweep."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.launch import MPI_FAST, REPO, WORKERS, Launch


@dataclass(frozen=True)
class Steps:
    """Warmup and timed steps of one measurement (median over ``repeats`` windows)."""

    warmup: int
    steps: int
    repeats: int


@dataclass(frozen=True)
class Variant:
    """One way of training the same model, compared side by side.

    Attributes:
        key: stable identifier used in the JSON and the tables.
        label: human-readable name.
        framework: "torch" or "tf" (picks the ceiling and the raw baseline).
        launcher: see ``benchmarks.launch.LAUNCHERS``.
        script: worker file name in ``benchmarks/workers``.
        args: worker arguments.
        env: extra environment (Horovod knobs).
        mpi_args: Open MPI flags when ``launcher == "mpirun"``.
        requires: repository paths that must exist for the variant to run.
        threads: intra-op threads per worker.
    """

    key: str
    label: str
    framework: str
    launcher: str
    script: str
    args: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    mpi_args: tuple[str, ...] = MPI_FAST
    requires: tuple[str, ...] = ()
    threads: int = 1

    def missing(self) -> str | None:
        """Why this variant cannot run in this checkout, or None."""
        for path in self.requires:
            if not (REPO / path).exists():
                return f"not available: {path} does not exist"
        return None

    def launch(self, np: int, models: list[str], steps: Steps, samples_per_rank: int) -> Launch:
        """The launch that measures this variant on ``models`` (one after another) with ``np`` workers."""
        args = [*self.args, "--model", ",".join(models), "--warmup", str(steps.warmup), "--steps", str(steps.steps),
                "--repeats", str(steps.repeats), "--threads", str(self.threads),
                "--samples-per-rank", str(samples_per_rank), "--variant", self.key]
        return Launch(self.launcher, np, WORKERS / self.script, args, dict(self.env), self.mpi_args)


TORCH_CEILING = Variant("torch-ceiling", "no communication (ceiling)", "torch", "independent",
                        "torch_loop.py", ("--comm", "none"))
TORCH_HVD_MPI = Variant("torch-hvd-mpi", "raw Horovod, MPI", "torch", "mpirun", "torch_loop.py",
                        ("--comm", "hvd"))
TORCH_HVD_GLOO = Variant("torch-hvd-gloo", "raw Horovod, Gloo (horovodrun --gloo)", "torch",
                         "horovodrun-gloo", "torch_loop.py", ("--comm", "hvd"))
TORCH_DDP = Variant("torch-ddp", "PyTorch DDP, Gloo (torchrun)", "torch", "torchrun", "torch_loop.py",
                    ("--comm", "ddp"))
HVDTRAIN_TORCH = Variant("hvdtrain-torch", "hvdtrain Trainer (hvdtrain run)", "torch", "hvdtrain",
                         "torch_hvdtrain.py", requires=("hvdtrain/torch/trainer.py", "hvdtrain/cli.py"))
HVDTRAIN_TORCH_MPI = Variant("hvdtrain-torch-mpi", "hvdtrain Trainer (tuned mpirun)", "torch", "mpirun",
                             "torch_hvdtrain.py", requires=("hvdtrain/torch/trainer.py",))
TF_CEILING = Variant("tf-ceiling", "Keras: no communication (ceiling)", "tf", "independent", "tf_loop.py",
                     ("--comm", "none"))
TF_HVD_MPI = Variant("tf-hvd-mpi", "Keras: raw grouped_allreduce loop, MPI", "tf", "mpirun", "tf_loop.py",
                     ("--comm", "hvd"))
HVDTRAIN_KERAS = Variant("hvdtrain-keras", "Keras: hvdtrain fit (hvdtrain run)", "tf", "hvdtrain",
                         "keras_hvdtrain.py", requires=("hvdtrain/tensorflow/__init__.py", "hvdtrain/cli.py"))
HVDTRAIN_KERAS_MPI = Variant("hvdtrain-keras-mpi", "Keras: hvdtrain fit (tuned mpirun)", "tf", "mpirun",
                             "keras_hvdtrain.py", requires=("hvdtrain/tensorflow/__init__.py",))

#: The side-by-side comparison, in table order.
VARIANTS = (TORCH_CEILING, TORCH_HVD_MPI, TORCH_HVD_GLOO, TORCH_DDP, HVDTRAIN_TORCH, HVDTRAIN_TORCH_MPI,
            TF_CEILING, TF_HVD_MPI, HVDTRAIN_KERAS, HVDTRAIN_KERAS_MPI)

#: Reference rows for the ratio columns, per framework.
CEILING = {"torch": TORCH_CEILING.key, "tf": TF_CEILING.key}
RAW_HOROVOD = {"torch": TORCH_HVD_MPI.key, "tf": TF_HVD_MPI.key}
DDP = TORCH_DDP.key

FULL_STEPS = {"mlp": Steps(15, 40, 3), "cnn": Steps(5, 20, 3)}
QUICK_STEPS = {"tiny-mlp": Steps(3, 10, 2), "tiny-cnn": Steps(3, 10, 2)}


@dataclass(frozen=True)
class TuningCase:
    """One Horovod/launcher setting measured against the tuned MPI baseline."""

    key: str
    label: str
    variant: Variant
    np: int = 2
    model: str = "mlp"
    group: str = ""
    reference: str = "baseline"


def _hvd(key: str, label: str, group: str, env: dict[str, str] | None = None,
         mpi_args: tuple[str, ...] = MPI_FAST, args: tuple[str, ...] = (), launcher: str = "mpirun",
         threads: int = 1, np: int = 2, model: str = "mlp", reference: str = "") -> TuningCase:
    variant = Variant(key, label, "torch", launcher, "torch_loop.py", ("--comm", "hvd", *args),
                      tuple(sorted((env or {}).items())), mpi_args, threads=threads)
    return TuningCase(key, label, variant, np, model, group,
                      reference or ("cnn-baseline" if model == "cnn" else "baseline"))


def _no_yield() -> tuple[str, ...]:
    return ("--bind-to", "none")


def tuning_cases() -> list[TuningCase]:
    """The settings sweep behind the "Fast defaults" section (raw Horovod, MLP, 2 workers)."""
    cases = [
        _hvd("baseline", "mpirun, yield_when_idle=1, bind-to none, defaults", "baseline"),
        _hvd("no-yield", "mpirun without mpi_yield_when_idle", "launcher", mpi_args=_no_yield()),
        _hvd("bind-core", "mpirun --bind-to core (Open MPI's default binding)", "launcher",
             mpi_args=("--bind-to", "core", "--mca", "mpi_yield_when_idle", "1")),
        _hvd("vader-nocma", "mpirun, shared-memory single copy off (btl_vader_single_copy_mechanism none)",
             "launcher", mpi_args=(*MPI_FAST, "--mca", "btl_vader_single_copy_mechanism", "none")),
        _hvd("gloo-ops", "mpirun, HOROVOD_CPU_OPERATIONS=gloo (MPI controller, Gloo allreduce)", "launcher",
             env={"HOROVOD_CPU_OPERATIONS": "gloo"}),
        _hvd("horovodrun-gloo", "horovodrun --gloo", "launcher", launcher="horovodrun-gloo"),
    ]
    for ms in ("0.2", "2", "5", "10"):
        cases.append(_hvd(f"cycle-{ms}", f"HOROVOD_CYCLE_TIME={ms} (ms; default 1)", "cycle",
                          env={"HOROVOD_CYCLE_TIME": ms}))
    for mb in (0, 4, 32):
        cases.append(_hvd(f"fusion-{mb}mb", f"HOROVOD_FUSION_THRESHOLD={mb} MB (default 128 MB)", "fusion",
                          env={"HOROVOD_FUSION_THRESHOLD": str(mb << 20)}))
    cases += [
        _hvd("fp16-mpi", "fp16 compression, MPI", "compression", args=("--compression", "fp16")),
        _hvd("fp16-gloo", "fp16 compression, horovodrun --gloo (vs horovodrun --gloo)", "compression",
             args=("--compression", "fp16"), launcher="horovodrun-gloo", reference="horovodrun-gloo"),
        _hvd("threads-2", "2 intra-op threads per worker (4 threads on 2 cores)", "threads", threads=2),
        TuningCase("one-proc-2-threads", "1 process, 2 threads, no Horovod (the alternative to data parallel)",
                   Variant("one-proc-2-threads", "1 process x 2 threads", "torch", "independent",
                           "torch_loop.py", ("--comm", "none"), threads=2), np=1, group="threads"),
        _hvd("cnn-baseline", "CNN: tuned mpirun baseline", "cnn", model="cnn"),
        _hvd("cnn-no-yield", "CNN: without mpi_yield_when_idle", "cnn", mpi_args=_no_yield(), model="cnn"),
        _hvd("cnn-cycle-5", "CNN: HOROVOD_CYCLE_TIME=5", "cnn", env={"HOROVOD_CYCLE_TIME": "5"}, model="cnn"),
        _hvd("cnn-gloo", "CNN: horovodrun --gloo", "cnn", launcher="horovodrun-gloo", model="cnn"),
        TuningCase("cnn-one-proc-2-threads", "CNN: 1 process, 2 threads, no Horovod",
                   Variant("cnn-one-proc-2-threads", "1 process x 2 threads", "torch", "independent",
                           "torch_loop.py", ("--comm", "none"), threads=2), np=1, model="cnn", group="cnn",
                   reference="cnn-baseline"),
    ]
    return cases


@dataclass(frozen=True)
class AllreduceCase:
    """One allreduce implementation in the bandwidth sweep."""

    key: str
    label: str
    launcher: str
    impl: str
    env: dict[str, str] = field(default_factory=dict)
    mpi_args: tuple[str, ...] = MPI_FAST

    def launch(self, np: int, sizes: list[int], budget_mb: float) -> Launch:
        args = ["--impl", self.impl, "--sizes", ",".join(map(str, sizes)), "--budget-mb", str(budget_mb),
                "--variant", self.key]
        return Launch(self.launcher, np, WORKERS / "allreduce.py", args, dict(self.env), self.mpi_args)


ALLREDUCE_CASES = (
    AllreduceCase("hvd-mpi", "Horovod, MPI (tuned mpirun)", "mpirun", "hvd"),
    AllreduceCase("hvd-gloo", "Horovod, Gloo (horovodrun --gloo)", "horovodrun-gloo", "hvd"),
    AllreduceCase("torch-gloo", "torch.distributed, Gloo (torchrun)", "torchrun", "torch"),
    AllreduceCase("mpi4py", "plain MPI (mpi4py, tuned mpirun)", "mpirun", "mpi4py"),
)
FULL_SIZES = [4 << 10, 16 << 10, 64 << 10, 256 << 10, 1 << 20, 4 << 20, 16 << 20, 64 << 20]
QUICK_SIZES = [4 << 10, 64 << 10, 1 << 20]


def worker_path(script: str) -> Path:
    """Absolute path of a worker script."""
    return WORKERS / script
