"""Train an MLP on scikit-learn's digits (bundled, no download) with Keras ``model.fit`` and hvdtrain.

``hvdtrain.tensorflow.fit`` shards the arrays across workers, converts the compiled optimizer to average
gradients with Horovod, and runs hvdtrain's callbacks (broadcast, metric averaging, warmup, checkpoints,
logs) inside ``model.fit``. Resume restarts at the epoch of the newest checkpoint.

    horovodrun -np 2 python examples/keras_digits.py
    mpirun -np 2 python examples/keras_digits.py --epochs 30 --output-dir runs/keras_digits --resume
    hvdtrain run -np 2 examples/keras_digits.py
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=20, help="epochs to train (default: 20)")
    parser.add_argument("--batch-size", type=int, default=32, help="samples per step per worker (default: 32)")
    parser.add_argument("--lr", type=float, default=0.05, help="single-worker learning rate (default: 0.05)")
    parser.add_argument("--warmup-epochs", type=float, default=2.0, help="LR warmup epochs (default: 2)")
    parser.add_argument("--output-dir", type=Path, default=Path("runs/keras_digits"),
                        help="checkpoints, metrics.csv and TensorBoard events (default: runs/keras_digits)")
    parser.add_argument("--checkpoint-dir", type=Path, default=None,
                        help="checkpoint directory (default: OUTPUT_DIR/checkpoints)")
    parser.add_argument("--resume", action="store_true", help="resume from the newest checkpoint")
    parser.add_argument("--patience", type=int, default=None, help="early-stopping patience in epochs")
    parser.add_argument("--seed", type=int, default=0, help="seed of weights, split and data order (default: 0)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    args = parser.parse_args(argv)
    if args.epochs < 1 or args.batch_size < 1 or args.lr <= 0:
        parser.error("--epochs and --batch-size must be >= 1 and --lr > 0")
    return args


def load_data(seed: int):
    """Digits 8x8 images, standardized, split 80/20 identically on every rank."""
    import numpy as np
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x_train, x_val, y_train, y_val = train_test_split(
        digits.data.astype(np.float32), digits.target.astype(np.int64), test_size=0.2, random_state=seed,
        stratify=digits.target)
    mean, std = x_train.mean(0), x_train.std(0)
    std[std == 0] = 1.0  # pixels that are blank in every training image
    return ((x_train - mean) / std, y_train), ((x_val - mean) / std, y_val)


def build_model():
    import keras

    return keras.Sequential([keras.Input((64,)), keras.layers.Dense(128, activation="relu"),
                             keras.layers.Dropout(0.1), keras.layers.Dense(10)])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow is imported
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    import keras

    import hvdtrain.tensorflow as htf

    backend = htf.init()  # before any model: it sizes TensorFlow's thread pools

    keras.utils.set_random_seed(args.seed)
    (x_train, y_train), val = load_data(args.seed)
    model = build_model()
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=args.lr, momentum=0.9),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    history = htf.fit(
        model, x_train, y_train, batch_size=args.batch_size, epochs=args.epochs, validation_data=val,
        seed=args.seed, warmup_epochs=args.warmup_epochs,
        checkpoint_dir=args.checkpoint_dir or args.output_dir / "checkpoints", monitor="val_accuracy",
        resume=args.resume, early_stopping_patience=args.patience, log_dir=args.output_dir,
        progress=not args.no_progress, verbose=0)
    accuracies = history.history.get("val_accuracy", [])
    if backend.rank == 0 and accuracies:  # history.epoch: the epochs run now (fewer after a resume)
        print(f"final val_accuracy={accuracies[-1]:.4f} after {history.epoch[-1] + 1} epochs "
              f"on {backend.size} workers", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
