"""The shared script flags and the bundled digits data set."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from hvdtrain.datasets import digits
from hvdtrain.script import parse_training_args, training_parser


def test_defaults_and_values_parse():
    parser = training_parser("demo", epochs=7, output_dir="runs/demo")
    args = parse_training_args(parser, ["--resume", "--checkpoint-every-n-steps", "5"])
    assert (args.epochs, args.batch_size, args.output_dir, args.resume) == (7, 32, Path("runs/demo"), True)
    assert args.checkpoint_every_n_steps == 5
    assert args.checkpoint_dir == Path("runs/demo/checkpoints")
    chosen = parse_training_args(parser, ["--checkpoint-dir", "/shared/ckpt"])
    assert (chosen.checkpoint_dir, chosen.output_dir) == (Path("/shared/ckpt"), Path("runs/demo"))
    options = args.options
    assert (options.epochs, options.resume, options.log_dir) == (7, True, Path("runs/demo"))
    assert options.checkpoint_every_n_steps == 5 and options.checkpoint_dir == Path("runs/demo/checkpoints")


@pytest.mark.parametrize(("argv", "message"), [
    (["--epochs", "0"], "--epochs must be >= 1 (got 0)"),
    (["--batch-size", "0"], "--batch-size must be >= 1 (got 0)"),
    (["--lr", "-1"], "--lr must be > 0 (got -1.0)"),
    (["--warmup-epochs", "-1"], "--warmup-epochs must be >= 0"),
    (["--patience", "0"], "--patience must be >= 1"),
    (["--checkpoint-every-n-steps", "0"], "--checkpoint-every-n-steps must be >= 1"),
    (["--compression", "zip"], "argument --compression: invalid choice: 'zip'"),
])
def test_bad_values_exit_with_a_message_naming_the_flag(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        parse_training_args(training_parser("demo", epochs=1, output_dir="x"), argv)
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err


def test_digits_split_is_stratified_standardized_and_the_same_for_a_seed():
    (x_train, y_train), (x_val, y_val) = digits(seed=3)
    assert x_train.shape == (1437, 64) and x_val.shape == (360, 64)
    assert x_train.dtype == np.float32 and y_train.dtype == np.int64
    assert np.allclose(x_train.mean(0), 0, atol=1e-5)
    assert set(np.unique(y_val)) == set(range(10))
    again = digits(seed=3)
    assert np.array_equal(again[0][0], x_train) and np.array_equal(again[1][1], y_val)
