"""TensorFlow checkpoints load without running code; 0.1.0 pickles are refused, and converted only on request."""
from __future__ import annotations

import json
import re

import keras
import numpy as np
import pytest

import hvdtrain.tensorflow as htf
from hvdtrain.core.backend import SerialBackend
from hvdtrain.core.checkpoint import CheckpointError, CheckpointManager
from hvdtrain.core.checkpoint_io import read_checkpoint
from hvdtrain.core.state_codec import MAGIC
from hvdtrain.launcher.convert import convert_checkpoint
from tests.checkpoint_files import plant_pickle, rewrite_as_legacy
from tests.tensorflow.test_trainer_and_fit import data, loss, model


def adapter():
    return htf.TensorFlowAdapter(SerialBackend())


def compiled(seed=0):
    m = model(seed)
    m.compile(optimizer=keras.optimizers.Adam(0.01), loss=loss())
    return m


def fit(directory, epochs, resume=False, seed=0):
    model = compiled(seed)
    htf.fit(model, *data(), batch_size=16, epochs=epochs, checkpoint_dir=directory, resume=resume, progress=False,
            verbose=0, seed=3)
    return np.concatenate([w.ravel() for w in model.get_weights()])


def test_the_payload_is_json_and_npz_only(backend, tmp_path):
    fit(tmp_path, 1)
    payload = read_checkpoint(CheckpointManager(tmp_path).checkpoints()[-1].path)[1]
    index = json.loads(payload[len(MAGIC):payload.index(b"\n", len(MAGIC))])
    assert [section["tag"] for section in index["sections"]] == ["$array"]
    assert index["tree"]["progress"]["epoch"] == 1
    assert index["tree"]["model_optimizer"]["format"] == "hvdtrain.tensorflow/1"


def test_fit_refuses_a_planted_pickle_and_the_command_never_runs(backend, tmp_path):
    marker = tmp_path / "pwned"
    planted = plant_pickle(tmp_path / "ckpt", marker, "tensorflow", world_size=1)
    with pytest.raises(CheckpointError, match=rf"{re.escape(str(planted))}: its payload is a Python pickle: the "
                                              rf"format of hvdtrain 0\.1\.0.* `hvdtrain convert-checkpoint "
                                              rf"{re.escape(str(planted))}`"):
        fit(tmp_path / "ckpt", 2, resume=True)
    assert not marker.exists()


def test_a_converted_0_1_0_checkpoint_resumes_like_the_original(backend, tmp_path):
    fit(tmp_path / "safe", 2)
    original = CheckpointManager(tmp_path / "safe").checkpoints()[-1].path
    old = rewrite_as_legacy(original, adapter(), tmp_path / "old" / original.name)
    assert read_checkpoint(old)[1].startswith(b"\x80"), "a pickle, as hvdtrain 0.1.0 wrote it"
    with pytest.raises(CheckpointError, match="hvdtrain convert-checkpoint"):
        fit(old.parent, 3, resume=True)

    converted = convert_checkpoint(old)
    assert converted.name == old.name[:-len(".ckpt")] + ".safe.ckpt" and old.exists()
    np.testing.assert_array_equal(fit(old.parent, 3, resume=True, seed=7), fit(original.parent, 3, resume=True,
                                                                               seed=8))
