"""A training script's ``TrainingOptions`` from its command line or a YAML file, checked before Horovod starts.

The flags and the file keys are ``TrainingOptions``' own fields (``--batch-size`` is ``batch_size``),
plus ``output_dir``: metrics and TensorBoard events go there, checkpoints to ``OUTPUT_DIR/checkpoints``
unless ``checkpoint_dir`` says otherwise.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import yaml

from hvdtrain.core.options import (
    COMPRESSIONS,
    FIELDS,
    PRECISIONS,
    REDUCE_OPS,
    OptionsError,
    TrainingOptions,
    typed_value,
)

_ARG_TYPES = {"int": int, "float": float, "str": str, "path": Path, "precision": str}
_CHOICES = {"compression": COMPRESSIONS, "op": REDUCE_OPS, "precision": PRECISIONS}


def flag_of(name: str) -> str | None:
    """The command-line flag of option ``name``, or None if it has none."""
    flag = FIELDS[name].metadata["flag"]
    return None if flag is None else flag or "--" + name.replace("_", "-")


def training_parser(description: str | None, *, output_dir: str = "runs", **defaults: Any) -> argparse.ArgumentParser:
    """A parser with a flag for each command-line option and ``--output-dir``.

    Args:
        description: the script's help text.
        output_dir: the default of ``--output-dir``.
        **defaults: the script's own defaults for options (e.g. ``epochs=30, lr=0.05``).

    Add your own flags, then call ``parse_training_args``.
    """
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    base = TrainingOptions()
    for name, field in FIELDS.items():
        flag = flag_of(name)
        if flag is not None:
            _add_option(parser, name, flag, field.metadata, defaults.get(name, getattr(base, name)))
    parser.add_argument("--output-dir", type=Path, default=Path(output_dir),
                        help=f"metrics.csv, TensorBoard events and, by default, checkpoints/ (default: {output_dir})")
    return parser


def _add_option(parser: argparse.ArgumentParser, name: str, flag: str, meta: Any, default: Any) -> None:
    kind, help_text = meta["kind"], meta["help"]
    if kind == "bool":  # the flag turns a default-on option off, e.g. --no-progress
        parser.add_argument(flag, dest=name, action="store_false", help=help_text + " (on unless given)")
    elif kind == "resume":
        parser.add_argument(flag, dest=name, action="store_true",
                            help="resume from the newest good checkpoint in the checkpoint directory")
    else:
        parser.add_argument(flag, dest=name, type=_ARG_TYPES[kind], default=default, choices=_CHOICES.get(name),
                            help=f"{help_text} (default: {default})")


def parse_training_args(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> argparse.Namespace:
    """Parse ``argv``; ``args.options`` is the checked ``TrainingOptions``.

    A bad value exits with status 2 and a message naming the flag.
    """
    args = parser.parse_args(argv)
    values = {name: getattr(args, name) for name in FIELDS if hasattr(args, name)}
    _place_outputs(values, args.output_dir)
    try:
        args.options = TrainingOptions(**values)
    except OptionsError as err:
        flag = flag_of(err.option) if err.option else None
        message = str(err)
        parser.error(flag + message[len(err.option):] if flag and message.startswith(err.option) else message)
    args.checkpoint_dir = args.options.checkpoint_dir
    return args


def load_options(path: str | Path, **overrides: Any) -> TrainingOptions:
    """Options from a YAML file; ``overrides`` that are not None win over it.

    ``output_dir`` (default ``runs``) is relative to the file's folder.

    Raises:
        OptionsError: a missing or unparsable file, an unknown key (with the closest valid one), a value
            of the wrong type or out of range. The message starts with the path.
    """
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as err:
        raise OptionsError(f"{path}: cannot read the config ({err})") from err
    if not isinstance(raw, dict):
        raise OptionsError(f"{path}: expected a mapping of key: value, got {type(raw).__name__}")
    raw.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return _from_file_values(raw, path.parent)
    except OptionsError as err:
        raise OptionsError(f"{path}: {err}", err.option) from None


def _from_file_values(raw: dict[str, Any], base: Path) -> TrainingOptions:
    output_dir = raw.pop("output_dir", "runs")
    if not isinstance(output_dir, (str, Path)):
        raise OptionsError(f"output_dir must be a path (got {output_dir!r})", "output_dir")
    values = {key: typed_value(key, value) for key, value in raw.items()}
    if values.get("checkpoint_dir") is not None:
        values["checkpoint_dir"] = (base / values["checkpoint_dir"]).resolve()
    _place_outputs(values, (base / output_dir).resolve())
    return TrainingOptions(**values)


def _place_outputs(values: dict[str, Any], output_dir: Path) -> None:
    """Logs in ``output_dir`` and checkpoints in ``output_dir/checkpoints``, unless set otherwise."""
    values.setdefault("log_dir", output_dir)
    if values.get("checkpoint_dir") is None:
        values["checkpoint_dir"] = output_dir / "checkpoints"
