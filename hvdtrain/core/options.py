"""TrainingOptions: every training option, declared and validated once.

Both Trainers and ``hvdtrain.tensorflow.fit`` take one (or its fields as keyword arguments), the
default callbacks read it, and ``hvdtrain.script`` fills it from a script's flags or a YAML file.
"""
from __future__ import annotations

import dataclasses
import difflib
import inspect
import os
from collections.abc import Callable, Mapping
from typing import Any

from hvdtrain.core.pipeline_schedule import SCHEDULES

COMPRESSIONS = ("none", "fp16")
REDUCE_OPS = ("average", "sum", "adasum")
PRECISIONS = ("32", "bf16-mixed", "16-mixed")


class OptionsError(ValueError):
    """A training option that cannot work; the message names the option and the fix.

    Attributes:
        option: the field at fault, when there is one.
    """

    def __init__(self, message: str, option: str | None = None) -> None:
        super().__init__(message)
        self.option = option


def _option(default: Any, kind: str, help: str, flag: str | None = "") -> Any:
    """A field with its value kind (for files and flags), its help text and its command-line flag.

    ``flag=""`` derives the flag from the name; None keeps the option off the command line.
    """
    return dataclasses.field(default=default, metadata={"kind": kind, "help": help, "flag": flag})


@dataclasses.dataclass(frozen=True)
class TrainingOptions:
    """The options of a training run (everything but the model, the data and the framework objects)."""

    epochs: int = _option(1, "int", "epochs to train")
    batch_size: int = _option(32, "int", "samples per step on each worker (the global batch is x workers)")
    seed: int = _option(0, "int", "seed of the data order (and of the weights, in the examples)")
    lr: float | None = _option(None, "float", "single-worker learning rate set on the optimizer before it is "
                                              "scaled by the workers; None keeps the optimizer's")
    warmup_epochs: float = _option(0.0, "float", "linear LR warmup from the single-worker LR (Goyal et al.)")
    lr_schedule: Callable[[float], float] | None = _option(
        None, "callable", "multiplier of the base LR as a function of the fractional epoch", flag=None)
    lr_scheduler_interval: str = _option("step", "str", "when a framework lr_scheduler steps: after every "
                                                        "optimizer 'step' or every 'epoch'", flag=None)
    grad_clip_norm: float | None = _option(None, "float", "clip the averaged gradients to this global norm")
    backward_passes_per_step: int = _option(1, "int", "batches whose gradients are accumulated per update")
    micro_batches: int = _option(1, "int", "micro-batches each batch is cut into on a pipeline (PyTorch, "
                                           "hvdtrain.torch.init(pipeline=P)); more keep the stages busier")
    pipeline_schedule: str = _option("1f1b", "str", f"order of a pipeline's passes: one of {SCHEDULES} (1f1b holds "
                                                    "fewer activations)", flag="--schedule")
    shard_optimizer_state: int = _option(0, "int", "ZeRO stage (PyTorch): 1 shards the optimizer state over the "
                                                   "data-parallel replicas, 2 the gradients between accumulation "
                                                   "passes too; 0 replicates both")
    compression: str = _option("none", "str", f"gradient compression on the wire: one of {COMPRESSIONS}")
    op: str = _option("average", "str", f"how gradients are combined: one of {REDUCE_OPS}")
    scale_lr: bool = _option(True, "bool", "multiply the LR by the number of workers (linear scaling rule)",
                             flag=None)
    precision: str = _option("32", "precision", f"one of {PRECISIONS}: float32, or autocast to bfloat16 or "
                                                "float16 (with loss scaling)")
    checkpoint_dir: str | os.PathLike | None = _option(None, "path", "write checkpoints here (rank 0)")
    checkpoint_every_n_steps: int | None = _option(None, "int", "also checkpoint every n optimizer steps")
    keep_last: int = _option(2, "int", "newest checkpoints to keep")
    keep_best: int = _option(1, "int", "best checkpoints (by monitor) to keep")
    monitor: str = _option("val_loss", "str", "metric for best checkpoints and early stopping")
    resume: bool | str | os.PathLike = _option(False, "resume", "True: resume from checkpoint_dir; a path: "
                                                                "from that file or directory")
    commit_every_n_steps: int | None = _option(50, "int", "under elastic training (hvdtrain run --elastic), keep the "
                                                          "state in memory every n optimizer steps, besides every "
                                                          "epoch's end: a lost worker costs at most n steps")
    early_stopping_patience: int | None = _option(None, "int", "stop after this many epochs without improvement",
                                                  flag="--patience")
    log_dir: str | os.PathLike | None = _option(None, "path", "write metrics.csv and TensorBoard events here",
                                                flag=None)
    mlflow_uri: str | None = _option(None, "str", "log params, epoch metrics and the best checkpoint to this MLflow "
                                                  "tracking store (rank 0), e.g. sqlite:///mlflow.db (no server); "
                                                  "needs pip install 'hvdtrain[mlflow]'", flag="--mlflow")
    progress: bool = _option(True, "bool", "show a progress bar on rank 0", flag="--no-progress")

    def __post_init__(self) -> None:
        for option, problem in _problems(self):
            raise OptionsError(problem, option)

    @property
    def lr_follows_world_size(self) -> bool:
        """The linear scaling rule applies: ``scale_lr``, except with Adasum, which needs no scaling."""
        return self.scale_lr and self.op != "adasum"

    @classmethod
    def merged(cls, options: TrainingOptions | None, overrides: Mapping[str, Any], caller: str) -> TrainingOptions:
        """``options`` (or the defaults) with keyword ``overrides`` applied; unknown names raise ``TypeError``."""
        for name in overrides:
            if name not in FIELDS:
                close = difflib.get_close_matches(name, FIELDS, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise TypeError(f"{caller}() got an unexpected keyword argument {name!r}{hint}")
        base = options if options is not None else cls()
        return dataclasses.replace(base, **overrides) if overrides else base

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any]) -> TrainingOptions:
        """Options from plain values (a parsed YAML file); ints are accepted for floats.

        Raises:
            OptionsError: an unknown key (with the closest valid one) or a value of the wrong type or range.
        """
        return cls(**{key: typed_value(key, value) for key, value in raw.items()})


FIELDS: dict[str, dataclasses.Field] = {f.name: f for f in dataclasses.fields(TrainingOptions)}


def _problems(o: TrainingOptions) -> list[tuple[str, str]]:
    checks = [
        ("epochs", o.epochs >= 1, f"must be >= 1 (got {o.epochs})"),
        ("batch_size", o.batch_size >= 1, f"must be >= 1 (got {o.batch_size})"),
        ("lr", o.lr is None or o.lr > 0, f"must be > 0 (got {o.lr})"),
        ("warmup_epochs", o.warmup_epochs >= 0, f"must be >= 0 (got {o.warmup_epochs})"),
        ("lr_scheduler_interval", o.lr_scheduler_interval in ("step", "epoch"),
         f"must be 'step' or 'epoch' (got {o.lr_scheduler_interval!r})"),
        ("grad_clip_norm", o.grad_clip_norm is None or o.grad_clip_norm > 0,
         f"must be > 0 (got {o.grad_clip_norm})"),
        ("backward_passes_per_step", o.backward_passes_per_step >= 1,
         f"must be >= 1 (got {o.backward_passes_per_step})"),
        ("micro_batches", o.micro_batches >= 1, f"must be >= 1 (got {o.micro_batches})"),
        ("pipeline_schedule", o.pipeline_schedule in SCHEDULES,
         f"must be one of {list(SCHEDULES)} (got {o.pipeline_schedule!r})"),
        ("shard_optimizer_state", o.shard_optimizer_state in (0, 1, 2),
         f"must be 0 (off), 1 (optimizer state) or 2 (and gradients) (got {o.shard_optimizer_state})"),
        ("compression", o.compression in COMPRESSIONS,
         f"must be one of {sorted(COMPRESSIONS)} (got {o.compression!r})"),
        ("op", o.op in REDUCE_OPS, f"must be one of {sorted(REDUCE_OPS)} (got {o.op!r})"),
        ("precision", o.precision in PRECISIONS, f"must be one of {list(PRECISIONS)} (got {o.precision!r})"),
        ("keep_last", o.keep_last >= 1,
         f"must be >= 1 (got {o.keep_last}): the newest checkpoint is what resume uses"),
        ("keep_best", o.keep_best >= 0, f"must be >= 0 (got {o.keep_best})"),
        ("resume", o.resume is not True or o.checkpoint_dir is not None,
         "=True needs checkpoint_dir=; or pass the checkpoint path as resume="),
    ]
    for name in ("checkpoint_every_n_steps", "commit_every_n_steps", "early_stopping_patience"):
        value = getattr(o, name)
        checks.append((name, value is None or value >= 1, f"must be >= 1 or null (got {value})"))
    return [(name, f"{name}{'' if message.startswith('=') else ' '}{message}")
            for name, ok, message in checks if not ok]


_KINDS: dict[str, tuple[type, ...]] = {"int": (int,), "float": (float, int), "str": (str,), "bool": (bool,),
                                       "path": (str, os.PathLike), "resume": (bool, str, os.PathLike),
                                       "precision": (str, int)}


def typed_value(key: str, value: Any) -> Any:
    """``value`` checked (and an int made a float) for option ``key``, as read from a file.

    Raises:
        OptionsError: an unknown key, a null for a required option, or a value of the wrong type.
    """
    field = FIELDS.get(key)
    if field is None:
        close = difflib.get_close_matches(key, FIELDS, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise OptionsError(f"unknown key {key!r}; {hint}valid keys are {sorted(FIELDS)}", key)
    kind = field.metadata["kind"]
    if kind == "callable":
        raise OptionsError(f"{key} is a Python function: set it in code, not in a file", key)
    optional = field.default is None
    if value is None:
        if optional:
            return None
        raise OptionsError(f"{key} must not be null", key)
    allowed = _KINDS[kind]
    if not isinstance(value, allowed) or (isinstance(value, bool) and bool not in allowed):
        name = {"resume": "true/false or a path", "precision": "str"}.get(kind, kind)
        article = "an" if name == "int" else "a"
        raise OptionsError(f"{key} must be {article} {name}{' or null' if optional else ''} (got {value!r})", key)
    return float(value) if kind == "float" else str(value) if kind == "precision" else value


def accepts_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """Show every ``TrainingOptions`` field as a keyword-only parameter in ``func``'s signature.

    ``func`` takes them as ``**overrides`` (passed to ``TrainingOptions.merged``); this only documents
    them where ``help()``, IDEs and ``inspect.signature`` look, without declaring them again.
    """
    signature = inspect.signature(func)
    params = [p for p in signature.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
    params += [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=f.default)
               for name, f in FIELDS.items()]
    func.__signature__ = signature.replace(parameters=params)  # type: ignore[attr-defined]
    return func
