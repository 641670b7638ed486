"""PyTorch checkpoints load without running code; 0.1.0 pickles are refused, and converted only on request."""
from __future__ import annotations

import io
import os
import random
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

import hvdtrain.torch as ht
from hvdtrain.cli import main
from hvdtrain.core.checkpoint import CheckpointError, CheckpointManager
from hvdtrain.core.checkpoint_io import read_checkpoint, write_checkpoint
from hvdtrain.core.state_codec import MAGIC, LegacyCheckpointError, UnsafeCheckpointError
from tests.checkpoint_files import pickled_section_payload, plant_pickle, rewrite_as_legacy
from tests.launch import QUIET_ENV, REPO
from tests.probes import make_data


def adapter():
    return ht.TorchAdapter(ht.SerialBackend())


def tensors(seed, n=120):
    return tuple(torch.from_numpy(a) for a in make_data(seed, n))


def trainer(directory, epochs=2, resume=False):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 2))
    return ht.Trainer(model, torch.optim.Adam(model.parameters(), lr=0.01), nn.functional.cross_entropy,
                      tensors(0), tensors(1, 60), backend=ht.SerialBackend(), checkpoint_dir=directory,
                      resume=resume, epochs=epochs, batch_size=16, seed=3, progress=False)


def parameters(model):
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def test_model_optimizer_scaler_and_rng_state_round_trip():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4)).to(torch.float64)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01, betas=(0.8, 0.9))
    model(torch.randn(5, 3, dtype=torch.float64)).sum().backward()
    optimizer.step()
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    state = {"model_optimizer": {**adapter().state_dict(model, optimizer), "scaler": scaler.state_dict()},
             "rng": [adapter().rng_state()], "extra": {"bf16": torch.ones(3, dtype=torch.bfloat16),
                                                       "mask": torch.tensor([True, False]), "none": None}}
    back = adapter().deserialize(adapter().serialize(state))

    restored = back["model_optimizer"]
    assert restored["model"]._metadata == model.state_dict()._metadata  # per-module versions survive
    for name, tensor in model.state_dict().items():
        assert restored["model"][name].dtype == tensor.dtype
        torch.testing.assert_close(restored["model"][name], tensor, rtol=0, atol=0)
    saved_optimizer = optimizer.state_dict()
    assert restored["optimizer"]["param_groups"] == saved_optimizer["param_groups"]
    assert set(restored["optimizer"]["state"]) == set(saved_optimizer["state"]) == {0, 1, 2, 3}
    torch.testing.assert_close(restored["optimizer"]["state"][0]["exp_avg"], saved_optimizer["state"][0]["exp_avg"])
    assert restored["scaler"] == scaler.state_dict()
    assert back["extra"]["bf16"].dtype == torch.bfloat16 and back["extra"]["mask"].tolist() == [True, False]
    fresh = torch.optim.Adam(model.parameters(), lr=0.5)
    fresh.load_state_dict(restored["optimizer"])
    assert fresh.param_groups[0]["betas"] == (0.8, 0.9)

    adapter().set_rng_state(back["rng"][0])
    first = (torch.rand(1).item(), np.random.rand(), random.random())
    adapter().set_rng_state(back["rng"][0])
    assert (torch.rand(1).item(), np.random.rand(), random.random()) == first


def test_a_tensor_section_holding_a_pickled_command_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    payload = pickled_section_payload(marker, "torch")
    with pytest.raises(UnsafeCheckpointError, match=r"tensor section holds objects other than tensors, .*GLOBAL "
                                                    r"posix\.system"):
        adapter().deserialize(payload)
    assert not marker.exists()
    section = payload[payload.index(b"\n", len(MAGIC)) + 1:]
    torch.load(io.BytesIO(section), weights_only=False)  # the control: an unsafe load runs the command
    assert marker.exists()


def test_resume_refuses_a_planted_pickle_and_the_command_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    planted = plant_pickle(tmp_path / "ckpt", marker, "torch", world_size=1)
    with pytest.raises(CheckpointError, match=rf"{re.escape(str(planted))}: its payload is a torch\.save archive "
                                              rf".* `hvdtrain convert-checkpoint {re.escape(str(planted))}`"):
        trainer(tmp_path / "ckpt", resume=True).fit()
    assert not marker.exists()


def test_a_0_1_0_checkpoint_is_refused_then_converted_on_request_and_resumes_exactly(tmp_path, capsys):
    trainer(tmp_path / "safe", epochs=2).fit()
    original = CheckpointManager(tmp_path / "safe").checkpoints()[-1].path
    old = rewrite_as_legacy(original, adapter(), tmp_path / "old" / original.name)
    old_bytes = old.read_bytes()
    with pytest.raises(LegacyCheckpointError):
        adapter().deserialize(read_checkpoint(old)[1])
    with pytest.raises(CheckpointError, match=re.escape(f"`hvdtrain convert-checkpoint {old}`: it writes "
                                                        f"{old.name[:-5]}.safe.ckpt beside it")):
        trainer(old.parent, epochs=3, resume=True).fit()

    assert main(["convert-checkpoint", str(old)]) == 2, "stdin is not a terminal: --yes is required"
    err = capsys.readouterr().err
    assert "WARNING: " in err and "unpickling runs any code stored in the file" in err
    assert "was not converted: run again with --yes if you trust it" in err
    assert not old.with_name(f"{old.name[:-5]}.safe.ckpt").exists()

    assert main(["convert-checkpoint", "--yes", str(old)]) == 0
    converted = old.with_name(f"{old.name[:-5]}.safe.ckpt")
    assert f"wrote {converted} in the safe format; {old} is unchanged" in capsys.readouterr().out
    assert old.read_bytes() == old_bytes
    header = read_checkpoint(converted)[0]
    assert header["converted_from"] == old.name and header["global_step"] == read_checkpoint(old)[0]["global_step"]

    from_converted = trainer(old.parent, epochs=3, resume=True)
    from_converted.fit()
    assert from_converted.ctx.resumed_from == str(converted)
    from_original = trainer(original.parent, epochs=3, resume=True)
    from_original.fit()
    torch.testing.assert_close(parameters(from_converted.model), parameters(from_original.model), rtol=0, atol=0)


@pytest.mark.parametrize(("argv", "message"), [
    (["--yes", "{missing}"], "does not exist; pass a .ckpt file written by hvdtrain 0.1.0"),
    (["--yes", "{damaged}"], "is truncated"),
    (["--yes", "-o", "x.ckpt", "{safe}", "{safe}"], "--output takes one checkpoint"),
])
def test_convert_checkpoint_refuses_what_it_cannot_convert(tmp_path, capsys, argv, message):
    safe = write_checkpoint(tmp_path / "a.ckpt", {"epoch": 0, "global_step": 0, "framework": "torch"},
                            adapter().serialize({"w": torch.zeros(1)}))
    damaged = write_checkpoint(tmp_path / "b.ckpt", {"epoch": 0, "global_step": 0}, b"\x80 a pickle")
    damaged.write_bytes(damaged.read_bytes()[:-2])
    names = {"safe": safe, "missing": tmp_path / "missing.ckpt", "damaged": damaged}
    assert main(["convert-checkpoint", *(a.format(**names) for a in argv)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("hvdtrain convert-checkpoint: error: ") and message in err
    assert "WARNING" not in err, "nothing is unpickled, so there is nothing to warn about"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.ckpt", "b.ckpt"], "nothing was written"


def test_an_already_safe_checkpoint_is_skipped_so_a_glob_over_a_directory_works(tmp_path, capsys):
    safe = write_checkpoint(tmp_path / "a.ckpt", {"epoch": 0, "global_step": 0, "framework": "torch"},
                            adapter().serialize({"w": torch.zeros(1)}))
    assert main(["convert-checkpoint", "--yes", str(safe)]) == 0
    out, err = capsys.readouterr()
    assert f"{safe} is already in the safe format: resume from it as it is; skipped" in out
    assert "WARNING" not in err and [p.name for p in tmp_path.iterdir()] == ["a.ckpt"]


def test_the_hvdtrain_command_converts_from_a_shell(tmp_path):
    trainer(tmp_path, epochs=1).fit()
    old = rewrite_as_legacy(CheckpointManager(tmp_path).checkpoints()[-1].path, adapter())
    done = subprocess.run([sys.executable, "-m", "hvdtrain", "convert-checkpoint", "--yes", str(old)],
                          capture_output=True, text=True, timeout=120, cwd=REPO, env={**os.environ, **QUIET_ENV},
                          stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr
    assert "WARNING" in done.stderr and "in the safe format" in done.stdout
    converted = old.with_name(f"{old.name[:-5]}.safe.ckpt")
    state = adapter().deserialize(read_checkpoint(converted)[1])
    assert state["progress"]["epoch"] == 1 and "model" in state["model_optimizer"]


def test_a_checkpoint_of_another_model_is_refused_with_a_checkpoint_error_naming_it(tmp_path):
    trainer(tmp_path, epochs=1).fit()
    saved = CheckpointManager(tmp_path).checkpoints()[-1].path
    torch.manual_seed(0)
    other = nn.Sequential(nn.Linear(10, 8), nn.ReLU(), nn.Linear(8, 2))
    wrong = ht.Trainer(other, torch.optim.Adam(other.parameters()), nn.functional.cross_entropy, tensors(0),
                       backend=ht.SerialBackend(), checkpoint_dir=tmp_path, resume=True, epochs=2, progress=False)
    # A CheckpointError is what ResumeFromCheckpoint broadcasts, so every rank of a job raises it together.
    with pytest.raises(CheckpointError, match=rf"could not restore {re.escape(str(saved))}: RuntimeError: Error\(s\) "
                                              r"in loading state_dict"):
        wrong.fit()
