import os
import signal
import subprocess
import sys
import time

import pytest

from hvdtrain.core.checkpoint import CheckpointManager, load_file
from hvdtrain.core.checkpoint_io import CheckpointError, read_checkpoint, read_header, write_checkpoint


def test_round_trip_keeps_header_and_payload(tmp_path):
    path = write_checkpoint(tmp_path / "a.ckpt", {"epoch": 3, "world_size": 2}, b"payload")
    header, payload = read_checkpoint(path)
    assert payload == b"payload"
    assert header["epoch"] == 3 and header["world_size"] == 2 and header["payload_bytes"] == 7
    assert read_header(path)["payload_sha256"] == header["payload_sha256"]
    assert [p.name for p in tmp_path.iterdir()] == ["a.ckpt"], "no temp file may be left behind"


def test_truncated_file_is_refused_with_a_clear_message(tmp_path):
    path = write_checkpoint(tmp_path / "a.ckpt", {"epoch": 0}, b"x" * 1000)
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(CheckpointError, match=r"is truncated: its header promises 1000 payload bytes but the "
                                              r"file holds 990.*resume from an earlier checkpoint"):
        read_checkpoint(path)


def test_truncated_header_is_refused(tmp_path):
    path = write_checkpoint(tmp_path / "a.ckpt", {"epoch": 0}, b"x")
    path.write_bytes(path.read_bytes()[:30])
    with pytest.raises(CheckpointError, match="truncated inside its header"):
        read_header(path)


def test_flipped_byte_fails_the_checksum(tmp_path):
    path = write_checkpoint(tmp_path / "a.ckpt", {"epoch": 0}, b"abcdef")
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="SHA-256 does not match"):
        read_checkpoint(path)


def test_foreign_file_is_named_as_such(tmp_path):
    path = tmp_path / "model.pt"
    path.write_bytes(b"PK\x03\x04 not ours")
    with pytest.raises(CheckpointError, match="not an hvdtrain checkpoint"):
        load_file(path)


def test_missing_file_says_what_to_pass(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist; pass a file written by ModelCheckpoint"):
        load_file(tmp_path / "nope.ckpt")


_WRITER = """
import sys
from hvdtrain.core.checkpoint import CheckpointManager
manager = CheckpointManager(sys.argv[1], keep_last=1)
print("writing", flush=True)
manager.save(b"n" * (400 << 20), epoch=2, global_step=20)
"""


def test_process_killed_while_writing_leaves_previous_checkpoint_loadable(tmp_path):
    manager = CheckpointManager(tmp_path, keep_last=1)
    manager.save(b"good state", epoch=1, global_step=10)
    writer = subprocess.Popen([sys.executable, "-c", _WRITER, str(tmp_path)], stdout=subprocess.PIPE,
                              env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert writer.stdout.readline().strip() == b"writing"
    deadline = time.time() + 30
    while not list(tmp_path.glob(".*.tmp-*")) and time.time() < deadline:
        time.sleep(0.001)
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    assert writer.returncode == -signal.SIGKILL
    assert not (tmp_path / "ckpt-epoch0002-step00000020.ckpt").exists(), "the write finished before the kill"
    info, payload = manager.load_latest()
    assert (info.global_step, payload) == (10, b"good state")
    manager.save(b"next", epoch=2, global_step=20)
    assert not list(tmp_path.glob(".*.tmp-*")), "the dead writer's temp file is cleaned on the next save"
