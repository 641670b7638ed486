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
LIGHTNING = Variant("lightning", "Lightning Trainer, DDP on Gloo (torchrun)", "torch", "torchrun", "torch_peers.py",
                    ("--framework", "lightning"))
ACCELERATE = Variant("accelerate", "Accelerate, Gloo (torchrun)", "torch", "torchrun", "torch_peers.py",
                     ("--framework", "accelerate"))
TF_CEILING = Variant("tf-ceiling", "Keras: no communication (ceiling)", "tf", "independent", "tf_loop.py",
                     ("--comm", "none"))
TF_HVD_MPI = Variant("tf-hvd-mpi", "Keras: raw grouped_allreduce loop, MPI", "tf", "mpirun", "tf_loop.py",
                     ("--comm", "hvd"))
HVDTRAIN_KERAS = Variant("hvdtrain-keras", "Keras: hvdtrain fit (hvdtrain run)", "tf", "hvdtrain",
                         "keras_hvdtrain.py", requires=("hvdtrain/tensorflow/__init__.py", "hvdtrain/cli.py"))
HVDTRAIN_KERAS_MPI = Variant("hvdtrain-keras-mpi", "Keras: hvdtrain fit (tuned mpirun)", "tf", "mpirun",
                             "keras_hvdtrain.py", requires=("hvdtrain/tensorflow/__init__.py",))

#: The side-by-side comparison, in table order.
VARIANTS = (TORCH_CEILING, TORCH_HVD_MPI, TORCH_HVD_GLOO, TORCH_DDP, LIGHTNING, ACCELERATE, HVDTRAIN_TORCH,
            HVDTRAIN_TORCH_MPI, TF_CEILING, TF_HVD_MPI, HVDTRAIN_KERAS, HVDTRAIN_KERAS_MPI)

#: Reference rows for the ratio columns, per framework.
CEILING = {"torch": TORCH_CEILING.key, "tf": TF_CEILING.key}
RAW_HOROVOD = {"torch": TORCH_HVD_MPI.key, "tf": TF_HVD_MPI.key}
DDP = TORCH_DDP.key

#: Cores used by other processes during a timed window above which the window is discarded.
NOISY_CORES = 0.25

FULL_STEPS = {"mlp": Steps(15, 40, 3), "cnn": Steps(5, 20, 3)}
QUICK_STEPS = {"tiny-mlp": Steps(3, 10, 2), "tiny-cnn": Steps(3, 10, 2)}


#: Horovod's own defaults, which the sweep varies.
DEFAULT_CYCLE_MS = 1
DEFAULT_FUSION_MB = 128


class Tuning:
    """Keys of the tuning cases and groups that the report reasons about."""

    BASELINE = "baseline"
    NO_YIELD = "no-yield"
    BIND_CORE = "bind-core"
    VADER_NOCMA = "vader-nocma"
    GLOO_OPS = "gloo-ops"
    HOROVODRUN_GLOO = "horovodrun-gloo"
    FP16_MPI = "fp16-mpi"
    FP16_GLOO = "fp16-gloo"
    THREADS = "threads-2"
    ONE_PROCESS = "one-proc-2-threads"
    CNN_BASELINE = "cnn-baseline"
    CNN_NO_YIELD = "cnn-no-yield"
    CNN_CYCLE = "cnn-cycle-5"
    CNN_GLOO = "cnn-gloo"
    CNN_ONE_PROCESS = "cnn-one-proc-2-threads"
    CYCLE_GROUP = "cycle"
    FUSION_GROUP = "fusion"


@dataclass(frozen=True)
class TuningCase:
    """One Horovod/launcher setting measured against the tuned MPI baseline."""

    key: str
    label: str
    variant: Variant
    np: int = 2
    model: str = "mlp"
    group: str = ""
    reference: str = Tuning.BASELINE


def _hvd(key: str, label: str, group: str, env: dict[str, str] | None = None,
         mpi_args: tuple[str, ...] = MPI_FAST, args: tuple[str, ...] = (), launcher: str = "mpirun",
         threads: int = 1, np: int = 2, model: str = "mlp", reference: str = "") -> TuningCase:
    variant = Variant(key, label, "torch", launcher, "torch_loop.py", ("--comm", "hvd", *args),
                      tuple(sorted((env or {}).items())), mpi_args, threads=threads)
    return TuningCase(key, label, variant, np, model, group, reference or _baseline(model))


def _baseline(model: str) -> str:
    """The tuning case that other cases on ``model`` are compared with."""
    return Tuning.CNN_BASELINE if model == "cnn" else Tuning.BASELINE


def _no_yield() -> tuple[str, ...]:
    return ("--bind-to", "none")


def tuning_cases() -> list[TuningCase]:
    """The settings sweep behind the "Fast defaults" section (raw Horovod, MLP, 2 workers)."""
    cases = [
        _hvd(Tuning.BASELINE, "mpirun, yield_when_idle=1, bind-to none, defaults", "baseline"),
        _hvd(Tuning.NO_YIELD, "mpirun without mpi_yield_when_idle", "launcher", mpi_args=_no_yield()),
        _hvd(Tuning.BIND_CORE, "mpirun --bind-to core (Open MPI's default binding)", "launcher",
             mpi_args=("--bind-to", "core", "--mca", "mpi_yield_when_idle", "1")),
        _hvd(Tuning.VADER_NOCMA, "mpirun, shared-memory single copy off (btl_vader_single_copy_mechanism none)",
             "launcher", mpi_args=(*MPI_FAST, "--mca", "btl_vader_single_copy_mechanism", "none")),
        _hvd(Tuning.GLOO_OPS, "mpirun, HOROVOD_CPU_OPERATIONS=gloo (MPI controller, Gloo allreduce)", "launcher",
             env={"HOROVOD_CPU_OPERATIONS": "gloo"}),
        _hvd(Tuning.HOROVODRUN_GLOO, "horovodrun --gloo", "launcher", launcher="horovodrun-gloo"),
    ]
    for ms in ("0.2", "2", "5", "10"):
        cases.append(_hvd(f"{Tuning.CYCLE_GROUP}-{ms}", f"HOROVOD_CYCLE_TIME={ms} (ms; default {DEFAULT_CYCLE_MS})",
                          Tuning.CYCLE_GROUP, env={"HOROVOD_CYCLE_TIME": ms}))
    for mb in (0, 4, 32):
        cases.append(_hvd(f"{Tuning.FUSION_GROUP}-{mb}mb",
                          f"HOROVOD_FUSION_THRESHOLD={mb} MB (default {DEFAULT_FUSION_MB} MB)", Tuning.FUSION_GROUP,
                          env={"HOROVOD_FUSION_THRESHOLD": str(mb << 20)}))
    return cases + _compression_and_thread_cases() + _cnn_cases()


def _compression_and_thread_cases() -> list[TuningCase]:
    return [
        _hvd(Tuning.FP16_MPI, "fp16 compression, MPI", "compression", args=("--compression", "fp16")),
        _hvd(Tuning.FP16_GLOO, "fp16 compression, horovodrun --gloo (vs horovodrun --gloo)", "compression",
             args=("--compression", "fp16"), launcher="horovodrun-gloo", reference=Tuning.HOROVODRUN_GLOO),
        _hvd(Tuning.THREADS, "2 intra-op threads per worker", "threads", threads=2),
        _one_process(Tuning.ONE_PROCESS, "1 process, 2 threads, no Horovod (the alternative to data parallel)",
                     "mlp", "threads"),
    ]


def _cnn_cases() -> list[TuningCase]:
    return [
        _hvd(Tuning.CNN_BASELINE, "CNN: tuned mpirun baseline", "cnn", model="cnn"),
        _hvd(Tuning.CNN_NO_YIELD, "CNN: without mpi_yield_when_idle", "cnn", mpi_args=_no_yield(), model="cnn"),
        _hvd(Tuning.CNN_CYCLE, "CNN: HOROVOD_CYCLE_TIME=5", "cnn", env={"HOROVOD_CYCLE_TIME": "5"}, model="cnn"),
        _hvd(Tuning.CNN_GLOO, "CNN: horovodrun --gloo", "cnn", launcher="horovodrun-gloo", model="cnn"),
        _one_process(Tuning.CNN_ONE_PROCESS, "CNN: 1 process, 2 threads, no Horovod", "cnn", "cnn"),
    ]


def _one_process(key: str, label: str, model: str, group: str) -> TuningCase:
    """One process with 2 intra-op threads and no Horovod: the alternative to 2 data-parallel workers."""
    variant = Variant(key, "1 process x 2 threads", "torch", "independent", "torch_loop.py", ("--comm", "none"),
                      threads=2)
    return TuningCase(key, label, variant, np=1, model=model, group=group, reference=_baseline(model))


def swept_setting(key: str) -> str:
    """The value a swept case sets, from its key: "5" for "cnn-cycle-5", "4mb" for "fusion-4mb"."""
    return key.rsplit("-", 1)[1]


def tuning_case(key: str) -> TuningCase | None:
    """The sweep's case called ``key``, if there is one."""
    return next((case for case in tuning_cases() if case.key == key), None)


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


ALLREDUCE_HVD_MPI = AllreduceCase("hvd-mpi", "Horovod, MPI (tuned mpirun)", "mpirun", "hvd")
ALLREDUCE_HVD_GLOO = AllreduceCase("hvd-gloo", "Horovod, Gloo (horovodrun --gloo)", "horovodrun-gloo", "hvd")
ALLREDUCE_TORCH_GLOO = AllreduceCase("torch-gloo", "torch.distributed, Gloo (torchrun)", "torchrun", "torch")
ALLREDUCE_MPI4PY = AllreduceCase("mpi4py", "plain MPI (mpi4py, tuned mpirun)", "mpirun", "mpi4py")
#: The bandwidth sweep, in table order.
ALLREDUCE_CASES = (ALLREDUCE_HVD_MPI, ALLREDUCE_HVD_GLOO, ALLREDUCE_TORCH_GLOO, ALLREDUCE_MPI4PY)
#: Workers of every allreduce measurement.
ALLREDUCE_NP = 2
FULL_SIZES = [4 << 10, 16 << 10, 64 << 10, 256 << 10, 1 << 20, 4 << 20, 16 << 20, 64 << 20]
QUICK_SIZES = [4 << 10, 64 << 10, 1 << 20]


def worker_path(script: str) -> Path:
    """Absolute path of a worker script."""
    return WORKERS / script
