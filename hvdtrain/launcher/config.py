"""Options of ``hvdtrain run``: their specification, the YAML config file, and merging with the command line.

Config keys are the long option names with underscores (``fusion_threshold_mb`` for
``--fusion-threshold-mb``). Precedence: built-in defaults < config file < command line.
"""
from __future__ import annotations

import difflib
import os
import re
import shlex
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import yaml

from hvdtrain.launcher.errors import LaunchError

CONTROLLERS = ("mpi", "gloo")
LAUNCHERS = ("auto", "horovodrun", "mpirun")
LOG_LEVELS = ("TRACE", "DEBUG", "INFO", "WARNING", "ERROR", "FATAL")
# Keys whose relative paths in a config file are taken relative to that file.
PATH_KEYS = ("hostfile", "timeline_filename", "autotune_log_file", "ssh_identity_file", "host_discovery_script")
# Horovod's bounds on --blacklist-cooldown-range (horovod.runner.elastic.discovery), in seconds.
COOLDOWN_LIMITS = (1, 3600)


@dataclass(frozen=True)
class RunOptions:
    """Everything that shapes the launch command; ``None`` means "not set, use the default"."""

    np: int | None = None
    hosts: str | None = None
    hostfile: str | None = None
    controller: str | None = None
    launcher: str = "auto"
    fusion_threshold_mb: int | None = None
    cycle_time_ms: float | None = None
    cache_capacity: int | None = None
    timeline_filename: str | None = None
    timeline_mark_cycles: bool = False
    autotune: bool = False
    autotune_log_file: str | None = None
    no_stall_check: bool = False
    stall_check_warning_time_seconds: int | None = None
    stall_check_shutdown_time_seconds: int | None = None
    log_level: str | None = None
    network_interface: list[str] = field(default_factory=list)
    ssh_port: int | None = None
    ssh_identity_file: str | None = None
    env: list[str] = field(default_factory=list)
    mpi_args: list[str] = field(default_factory=list)
    skip_host_check: bool = False
    gloo_timeout_seconds: int | None = None
    elastic: bool = False
    min_np: int | None = None
    max_np: int | None = None
    host_discovery_script: str | None = None
    slots_per_host: int | None = None
    elastic_timeout: int | None = None
    reset_limit: int | None = None
    blacklist_cooldown_range: tuple[int, int] | None = None


_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
CONFIG_KEYS = tuple(f.name for f in fields(RunOptions))
_INT_KEYS = {"np": 1, "fusion_threshold_mb": 0, "cache_capacity": 0, "stall_check_warning_time_seconds": 0,
             "stall_check_shutdown_time_seconds": 0, "ssh_port": 1, "gloo_timeout_seconds": 1, "min_np": 1,
             "max_np": 1, "slots_per_host": 1, "elastic_timeout": 1, "reset_limit": 0}  # key -> smallest allowed
_BOOL_KEYS = {"timeline_mark_cycles", "autotune", "no_stall_check", "skip_host_check", "elastic"}
_CHOICE_KEYS = {"controller": CONTROLLERS, "launcher": LAUNCHERS, "log_level": LOG_LEVELS}


def unknown_key_message(key: str, source: str) -> str:
    """Explain an unknown config key: the closest valid key if any, and the full list."""
    close = difflib.get_close_matches(key.replace("-", "_"), CONFIG_KEYS, n=1, cutoff=0.6)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    if key in ("gloo", "mpi"):
        hint = f" (write `controller: {key}`)"
    return f"{source}: unknown key {key!r}{hint}; valid keys are: {', '.join(CONFIG_KEYS)}"


def load_config(path: str | os.PathLike) -> dict[str, Any]:
    """Read and validate a YAML config file; relative paths in it become relative to the file.

    Returns:
        The validated values, keyed by option name (only the keys present in the file).

    Raises:
        LaunchError: the file is missing, is not YAML, is not a mapping, has an unknown key or a bad value.
    """
    path = Path(path)
    source = f"config file {path}"
    if not path.is_file():
        raise LaunchError(f"{source} does not exist; check the path given to --config")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise LaunchError(f"{source} is not valid YAML: {err}".rstrip()) from err
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise LaunchError(f"{source} must be a mapping of option names to values (e.g. `np: 2`), "
                          f"not a {type(data).__name__}")
    values = {}
    for key, value in data.items():
        if key not in CONFIG_KEYS:
            raise LaunchError(unknown_key_message(str(key), source))
        values[key] = coerce(key, value, source)
    for key in PATH_KEYS:
        if values.get(key) and not Path(values[key]).expanduser().is_absolute():
            values[key] = str(path.parent / values[key])
    return values


def coerce(key: str, value: Any, source: str) -> Any:
    """Check one option value and convert it to the type ``RunOptions`` holds.

    Raises:
        LaunchError: the value has the wrong type or is out of range; the message names key and source.
    """
    where = f"{source}: {key}"
    if value is None:
        return [] if key in ("network_interface", "env", "mpi_args") else None
    if key in _INT_KEYS:
        return _as_int(value, _INT_KEYS[key], where)
    if key == "cycle_time_ms":
        return _as_positive_float(value, where)
    if key in _BOOL_KEYS:
        if not isinstance(value, bool):
            raise LaunchError(f"{where} must be true or false, got {value!r}")
        return value
    if key in _CHOICE_KEYS:
        return _as_choice(value, _CHOICE_KEYS[key], where)
    if key == "hosts":
        return _as_hosts(value, where)
    if key == "network_interface":
        return _as_name_list(value, where)
    if key == "env":
        return _as_env_list(value, where)
    if key == "blacklist_cooldown_range":
        return _as_cooldown_range(value, where)
    if key == "mpi_args":
        return shlex.split(value) if isinstance(value, str) else [str(item) for item in _as_list(value, where)]
    if not isinstance(value, str | int | float) or isinstance(value, bool):
        raise LaunchError(f"{where} must be a string, got {value!r}")
    return str(value)


def _as_int(value: Any, smallest: int, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str) or not str(value).strip().isdigit():
        raise LaunchError(f"{where} must be an integer >= {smallest}, got {value!r}")
    if int(value) < smallest:
        raise LaunchError(f"{where} must be an integer >= {smallest}, got {value!r}")
    return int(value)


def _as_positive_float(value: Any, where: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = -1.0
    if isinstance(value, bool) or not number > 0:
        raise LaunchError(f"{where} must be a number > 0, got {value!r}")
    return number


def _as_cooldown_range(value: Any, where: str) -> tuple[int, int]:
    """``[LOW, HIGH]`` or ``"LOW HIGH"`` seconds, within Horovod's limits."""
    low_limit, high_limit = COOLDOWN_LIMITS
    expected = (f"{where} must be two whole numbers of seconds LOW HIGH with {low_limit} <= LOW <= HIGH <= "
                f"{high_limit} (Horovod's limits), e.g. `10 100`; got {_shown(value)}")
    items = value.split() if isinstance(value, str) else value
    if not isinstance(items, list | tuple) or len(items) != 2:
        raise LaunchError(expected)
    try:
        low, high = (_as_int(item, low_limit, where) for item in items)
    except LaunchError:
        raise LaunchError(expected) from None
    if not low <= high <= high_limit:
        raise LaunchError(expected)
    return low, high


def _shown(value: Any) -> str:
    return " ".join(map(str, value)) if isinstance(value, list | tuple) else repr(value)


def _as_choice(value: Any, choices: tuple[str, ...], where: str) -> str:
    text = str(value)
    matched = [choice for choice in choices if choice.lower() == text.lower()]
    if not matched:
        raise LaunchError(f"{where} must be one of {', '.join(choices)}, got {value!r}")
    return matched[0]


def _as_list(value: Any, where: str) -> list:
    if not isinstance(value, list):
        raise LaunchError(f"{where} must be a list or a string, got {value!r}")
    return value


def _as_hosts(value: Any, where: str) -> str:
    items = value.split(",") if isinstance(value, str) else _as_list(value, where)
    return ",".join(str(item).strip() for item in items if str(item).strip())


def _as_name_list(value: Any, where: str) -> list[str]:
    items = value.split(",") if isinstance(value, str) else _as_list(value, where)
    return [str(item).strip() for item in items if str(item).strip()]


def _as_env_list(value: Any, where: str) -> list[str]:
    if isinstance(value, dict):
        return [f"{name}={'' if item is None else item}" for name, item in value.items()]
    items = [value] if isinstance(value, str) else _as_list(value, where)
    entries = [str(item) for item in items]
    for entry in entries:
        if not _ENV_NAME.match(entry.split("=", 1)[0]):
            raise LaunchError(f"{where}: {entry!r} is not NAME or NAME=VALUE")
    return entries


def merge(config: dict[str, Any], cli: dict[str, Any]) -> RunOptions:
    """Combine config-file values and command-line values; the command line wins.

    ``env`` entries are combined (a command-line entry replaces a config entry of the same name).
    Giving ``hosts`` or ``hostfile`` on the command line replaces both keys of the config file.

    Raises:
        LaunchError: the config file sets both ``hosts`` and ``hostfile``.
    """
    if config.get("hosts") and config.get("hostfile"):
        raise LaunchError("the config file sets both `hosts` and `hostfile`; keep one of them")
    values = dict(config)
    if cli.get("hosts") or cli.get("hostfile"):
        values.pop("hosts", None)
        values.pop("hostfile", None)
    for key, value in cli.items():
        if value is None or key == "env":
            continue
        if key in _BOOL_KEYS and value is False:
            continue
        values[key] = value
    values["env"] = merge_env(config.get("env", []), cli.get("env") or [])
    return replace(RunOptions(), **values)


def merge_env(first: list[str], second: list[str]) -> list[str]:
    """Concatenate ``NAME[=VALUE]`` lists; a later entry replaces an earlier one of the same name."""
    by_name: dict[str, str] = {}
    for entry in [*first, *second]:
        by_name.pop(entry.split("=", 1)[0], None)
        by_name[entry.split("=", 1)[0]] = entry
    return list(by_name.values())
