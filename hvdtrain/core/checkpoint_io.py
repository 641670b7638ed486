"""Atomic, checksummed checkpoint files.

A checkpoint file is a magic line, one JSON header line, then the payload::

    HVDTRAIN-CHECKPOINT 1\n
    {"payload_bytes": ..., "payload_sha256": ..., "epoch": ..., ...}\n
    <payload bytes>

It is written to a temp file in the same directory, fsynced, then renamed over
the final name, so a reader sees either the old file or the complete new one.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

MAGIC = b"HVDTRAIN-CHECKPOINT 1\n"
_MAX_HEADER_BYTES = 1 << 20
TEMP_MARKER = ".tmp-"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, truncated, corrupted or incompatible."""


def write_checkpoint(path: str | os.PathLike, header: dict[str, Any], payload: bytes) -> Path:
    """Write ``payload`` with ``header`` to ``path`` atomically.

    Args:
        path: final file name.
        header: JSON-serializable metadata; size and checksum are added.
        payload: the serialized state.

    Returns:
        The final path.
    """
    path = Path(path)
    full_header = dict(header, payload_bytes=len(payload),
                       payload_sha256=hashlib.sha256(payload).hexdigest())
    header_line = json.dumps(full_header, sort_keys=True).encode() + b"\n"
    tmp = path.with_name(f".{path.name}{TEMP_MARKER}{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(MAGIC)
            f.write(header_line)
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)
    return path


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_header(path: str | os.PathLike) -> dict[str, Any]:
    """Read only the header of a checkpoint (cheap: no payload read).

    Raises:
        CheckpointError: the file is not an hvdtrain checkpoint or its header is cut off.
    """
    with open(path, "rb") as f:
        return _read_header(f, Path(path))


def _read_header(f: Any, path: Path) -> dict[str, Any]:
    if f.read(len(MAGIC)) != MAGIC:
        raise CheckpointError(f"{path} is not an hvdtrain checkpoint (bad magic bytes); "
                              "point resume at a file written by hvdtrain's ModelCheckpoint")
    line = f.readline(_MAX_HEADER_BYTES)
    if not line.endswith(b"\n"):
        raise CheckpointError(f"{path} is truncated inside its header; "
                              "it was cut off while being written. Resume from an earlier checkpoint.")
    try:
        return json.loads(line)
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path} has a corrupted header ({err}); resume from an earlier checkpoint") from err


def read_checkpoint(path: str | os.PathLike) -> tuple[dict[str, Any], bytes]:
    """Read and verify a checkpoint.

    Returns:
        ``(header, payload)``.

    Raises:
        CheckpointError: the file is truncated or its checksum does not match.
    """
    path = Path(path)
    with open(path, "rb") as f:
        header = _read_header(f, path)
        payload = f.read()
    expected = int(header.get("payload_bytes", -1))
    if len(payload) != expected:
        raise CheckpointError(
            f"{path} is truncated: its header promises {expected} payload bytes but the file holds "
            f"{len(payload)}. It was cut off while being written; resume from an earlier checkpoint "
            "or delete this file.")
    if hashlib.sha256(payload).hexdigest() != header.get("payload_sha256"):
        raise CheckpointError(f"{path} is corrupted: the payload's SHA-256 does not match its header. "
                              "Resume from an earlier checkpoint or delete this file.")
    return header, payload


def remove_stale_temp_files(directory: Path) -> list[Path]:
    """Delete temp files left by writers that died mid-write (never a finished checkpoint)."""
    removed = []
    for tmp in directory.glob(f".*{TEMP_MARKER}*"):
        pid = tmp.name.rsplit(TEMP_MARKER, 1)[-1]
        if pid.isdigit() and not _process_alive(int(pid)):
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
