"""Horovod's tuning options: each option's horovodrun flag and environment variable, and hvdtrain's defaults."""
from __future__ import annotations

from dataclasses import replace

from hvdtrain.launcher.config import RunOptions
from hvdtrain.launcher.errors import LaunchError


def _number(value: float) -> str:
    return f"{value:g}"


# option key, horovodrun flag, Horovod environment variable, its value (None: a flag without value, "1").
HOROVOD_OPTIONS = (
    ("fusion_threshold_mb", "--fusion-threshold-mb", "HOROVOD_FUSION_THRESHOLD", lambda mb: str(mb * 1024 * 1024)),
    ("cycle_time_ms", "--cycle-time-ms", "HOROVOD_CYCLE_TIME", _number),
    ("cache_capacity", "--cache-capacity", "HOROVOD_CACHE_CAPACITY", str),
    ("timeline_filename", "--timeline-filename", "HOROVOD_TIMELINE", str),
    ("timeline_mark_cycles", "--timeline-mark-cycles", "HOROVOD_TIMELINE_MARK_CYCLES", None),
    ("autotune", "--autotune", "HOROVOD_AUTOTUNE", None),
    ("autotune_log_file", "--autotune-log-file", "HOROVOD_AUTOTUNE_LOG", str),
    ("no_stall_check", "--no-stall-check", "HOROVOD_STALL_CHECK_DISABLE", None),
    ("stall_check_warning_time_seconds", "--stall-check-warning-time-seconds", "HOROVOD_STALL_CHECK_TIME_SECONDS",
     str),
    ("stall_check_shutdown_time_seconds", "--stall-check-shutdown-time-seconds",
     "HOROVOD_STALL_SHUTDOWN_TIME_SECONDS", str),
    ("log_level", "--log-level", "HOROVOD_LOG_LEVEL", str),
    ("gloo_timeout_seconds", "--gloo-timeout-seconds", "HOROVOD_GLOO_TIMEOUT_SECONDS", str),
)


# Horovod's stall inspector shuts the job down after this many seconds of a stalled collective, unless told
# otherwise. It is a backstop past the per-rank watchdog (HVDTRAIN_COLLECTIVE_TIMEOUT, 600 s): it runs on
# rank 0 only and misses a stopped process (docs/reliability.md), but catches ranks that submit different
# collectives while all of them still run.
DEFAULT_STALL_SHUTDOWN_S = 900


def horovod_settings(options: RunOptions) -> list[tuple[list[str], str, str]]:
    """Each Horovod tuning option that is set, as (horovodrun flags, environment variable, value)."""
    _check_horovod_combinations(options)
    warning = options.stall_check_warning_time_seconds
    if not options.no_stall_check and options.stall_check_shutdown_time_seconds is None \
            and (warning if warning is not None else 60) < DEFAULT_STALL_SHUTDOWN_S:
        options = replace(options, stall_check_shutdown_time_seconds=DEFAULT_STALL_SHUTDOWN_S)
    settings = []
    for key, flag, variable, to_value in HOROVOD_OPTIONS:
        value = getattr(options, key)
        if value is None or value is False:
            continue
        if to_value is None:
            settings.append(([flag], variable, "1"))
        else:
            text = _number(value) if isinstance(value, float) else str(value)
            settings.append(([flag, text], variable, to_value(value)))
    return settings


def _check_horovod_combinations(options: RunOptions) -> None:
    stall_times = (options.stall_check_warning_time_seconds, options.stall_check_shutdown_time_seconds)
    if options.no_stall_check and any(value is not None for value in stall_times):
        raise LaunchError("--no-stall-check disables the stall check, so the stall check times do nothing; "
                          "drop one of them")
    warning, shutdown = options.stall_check_warning_time_seconds, options.stall_check_shutdown_time_seconds
    if shutdown and shutdown <= (warning if warning is not None else 60):
        raise LaunchError(f"--stall-check-shutdown-time-seconds {shutdown} must be greater than the warning time "
                          f"({warning if warning is not None else 60} s), or Horovod never shuts down")
    if options.timeline_mark_cycles and not options.timeline_filename:
        raise LaunchError("--timeline-mark-cycles needs --timeline-filename")
    if options.autotune_log_file and not options.autotune:
        raise LaunchError("--autotune-log-file needs --autotune")
