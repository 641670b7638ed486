"""Hyper-parameters of a training script, read from YAML and checked before any worker trains."""
from __future__ import annotations

import dataclasses
import difflib
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A training config that cannot work; the message names the key and the fix."""


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """The settings the team templates' ``train.py`` reads from ``config.yaml``.

    Attributes:
        epochs: epochs to train.
        batch_size: samples per step on each worker (the global batch is ``batch_size x workers``).
        lr: the single-worker learning rate; the optimizer wrapper scales it by the world size.
        warmup_epochs: linear LR warmup from the single-worker rate (Goyal et al.).
        seed: seed of the weights, the split and the data order.
        output_dir: checkpoints, ``metrics.csv`` and TensorBoard events, relative to the config file.
        checkpoint_every_n_steps: also checkpoint mid-epoch every n steps.
        early_stopping_patience: stop after this many epochs without improvement.
    """

    epochs: int = 20
    batch_size: int = 32
    lr: float = 0.05
    warmup_epochs: float = 0.0
    seed: int = 0
    output_dir: str = "runs"
    checkpoint_every_n_steps: int | None = None
    early_stopping_patience: int | None = None

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1 (got {getattr(self, name)})")
        if self.lr <= 0:
            raise ConfigError(f"lr must be > 0 (got {self.lr})")
        if self.warmup_epochs < 0:
            raise ConfigError(f"warmup_epochs must be >= 0 (got {self.warmup_epochs})")
        for name in ("checkpoint_every_n_steps", "early_stopping_patience"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"{name} must be >= 1 or null (got {value})")

    @classmethod
    def from_yaml(cls, path: str | Path, **overrides: Any) -> TrainConfig:
        """Read ``path``; ``overrides`` that are not None win over the file.

        Raises:
            ConfigError: a missing or unparsable file, an unknown key (with the closest valid one),
                a value of the wrong type or out of range. The message starts with the path.
        """
        path = Path(path)
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as err:
            raise ConfigError(f"{path}: cannot read the config ({err})") from err
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: expected a mapping of key: value, got {type(raw).__name__}")
        raw.update({k: v for k, v in overrides.items() if v is not None})
        try:
            return cls(**{key: _typed(key, value) for key, value in raw.items()})
        except ConfigError as err:
            raise ConfigError(f"{path}: {err}") from None

    def resolve(self, base: str | Path) -> Path:
        """``output_dir`` as an absolute path, relative to ``base`` (the config file's folder)."""
        return (Path(base) / self.output_dir).resolve()


_FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}
_TYPES = {"int": int, "float": float, "str": str}


def _typed(key: str, value: Any) -> Any:
    field = _FIELDS.get(key)
    if field is None:
        close = difflib.get_close_matches(key, _FIELDS, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ConfigError(f"unknown key {key!r}; {hint}valid keys are {sorted(_FIELDS)}")
    optional = "None" in field.type
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{key} must not be null")
    kind = _TYPES[field.type.split(" |")[0]]
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise ConfigError(f"{key} must be {'an' if kind is int else 'a'} {kind.__name__}"
                          f"{' or null' if optional else ''} (got {value!r})")
    return value
