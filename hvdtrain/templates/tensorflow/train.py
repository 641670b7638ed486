"""{{project_name}}: data-parallel Keras 3 training (TensorFlow) with hvdtrain.

    hvdtrain run -np 2 train.py            # or: horovodrun -np 2 python train.py
    hvdtrain run -np 2 train.py --resume   # continue from the newest checkpoint
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from hvdtrain.datasets import digits
from hvdtrain.script import OptionsError, load_options

HERE = Path(__file__).resolve().parent


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=HERE / "config.yaml", help="hyper-parameter file")
    parser.add_argument("--resume", action="store_true", help="resume from the newest checkpoint")
    parser.add_argument("--epochs", type=int, help="overrides epochs of the config")
    parser.add_argument("--output-dir", help="overrides output_dir of the config")
    return parser.parse_args()


def load_data(seed: int):
    """Replace with your data: return (train, val) pairs of NumPy arrays (every worker passes all of it)."""
    return digits(seed)


def build_model():
    """Replace with your model (Keras 3, built: give it a keras.Input)."""
    import keras

    return keras.Sequential([keras.Input((64,)), keras.layers.Dense(128, activation="relu"),
                             keras.layers.Dense(10)])


def main() -> None:
    args = parse_args()
    # Checked before TensorFlow and Horovod start: a bad key fails at once, with the valid keys.
    try:
        options = load_options(args.config, epochs=args.epochs, output_dir=args.output_dir,
                               resume=args.resume or None)
    except OptionsError as err:
        raise SystemExit(f"error: {err}") from None
    if options.checkpoint_every_n_steps:
        raise SystemExit(f"{args.config}: checkpoint_every_n_steps is not supported with Keras fit, which resumes "
                         "at the start of an epoch; set it to null")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    import hvdtrain.tensorflow as htf

    backend = htf.init()  # before building the model: it sizes TensorFlow's thread pools
    htf.set_precision(options.precision)  # before building the model: "32", "bf16-mixed" or "16-mixed"
    keras.utils.set_random_seed(options.seed)
    (x_train, y_train), val = load_data(options.seed)
    model = build_model()
    model.compile(optimizer=keras.optimizers.SGD(momentum=0.9),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    history = htf.fit(model, x_train, y_train, validation_data=val, options=options, verbose=0)
    accuracies = history.history.get("val_accuracy", [])
    if backend.rank == 0 and accuracies:
        print(f"final val_accuracy={accuracies[-1]:.4f}", flush=True)


if __name__ == "__main__":
    main()
