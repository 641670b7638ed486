"""The templates' options file: TrainingOptions from YAML, checked with messages that name the fix."""
from __future__ import annotations

import re

import pytest

from hvdtrain.script import OptionsError, load_options


def write(tmp_path, text):
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def test_reads_values_converts_ints_to_floats_and_applies_overrides(tmp_path):
    path = write(tmp_path, "epochs: 3\nlr: 1\nwarmup_epochs: 2\noutput_dir: out\ncheckpoint_every_n_steps: null\n")
    config = load_options(path, epochs=5, output_dir=None)
    assert (config.epochs, config.lr, config.warmup_epochs, config.batch_size) == (5, 1.0, 2.0, 32)
    assert config.log_dir == (tmp_path / "out").resolve()
    assert config.checkpoint_dir == (tmp_path / "out" / "checkpoints").resolve()


@pytest.mark.parametrize(("text", "message"), [
    ("epoch: 3\n", "unknown key 'epoch'; did you mean 'epochs'?"),
    ("epochs: three\n", "epochs must be an int (got 'three')"),
    ("epochs: true\n", "epochs must be an int (got True)"),
    ("lr: 0\n", "lr must be > 0 (got 0.0)"),
    ("batch_size: 0\n", "batch_size must be >= 1 (got 0)"),
    ("early_stopping_patience: 0\n", "early_stopping_patience must be >= 1 or null (got 0)"),
    ("seed: null\n", "seed must not be null"),
    ("- 1\n- 2\n", "expected a mapping of key: value, got list"),
    ("epochs: [\n", "cannot read the config"),
])
def test_bad_configs_name_the_file_the_key_and_the_fix(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(OptionsError) as caught:
        load_options(path)
    assert str(caught.value).startswith(f"{path}: ")
    assert message in str(caught.value)


def test_a_missing_file_is_reported(tmp_path):
    with pytest.raises(OptionsError, match="cannot read the config"):
        load_options(tmp_path / "absent.yaml")


@pytest.mark.parametrize(("value", "expected"), [
    ("", 30.0), ("12.5", 12.5), ("0", 0.0),
    ("soon", "X='soon' is not a number of seconds; set it to e.g. 30, or 0, which turns it off"),
    ("-1", "X='-1' must be a number of seconds above 0"), ("nan", "X='nan' must be a number of seconds above 0"),
])
def test_seconds_from_the_environment(value, expected):
    from hvdtrain.core.env import seconds_from_env

    if isinstance(expected, float):
        assert seconds_from_env("X", 30.0, "30", {"X": value}, zero="turns it off") == expected
    else:
        with pytest.raises(ValueError, match=re.escape(expected)):
            seconds_from_env("X", 30.0, "30", {"X": value}, zero="turns it off")
