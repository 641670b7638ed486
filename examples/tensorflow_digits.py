"""Train an MLP on scikit-learn's digits (bundled, no download) in hvdtrain's custom TensorFlow loop.

The loop is ``hvdtrain.tensorflow.Trainer``: a compiled ``tf.GradientTape`` step whose gradients are
averaged with one Horovod grouped allreduce, with hvdtrain's callbacks and exact (mid-epoch) resume.

    horovodrun -np 2 python examples/tensorflow_digits.py
    mpirun -np 2 python examples/tensorflow_digits.py --epochs 30 --output-dir runs/tf_digits --resume
    hvdtrain run -np 2 examples/tensorflow_digits.py
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
    parser.add_argument("--output-dir", type=Path, default=Path("runs/tensorflow_digits"),
                        help="checkpoints, metrics.csv and TensorBoard events (default: runs/tensorflow_digits)")
    parser.add_argument("--checkpoint-dir", type=Path, default=None,
                        help="checkpoint directory (default: OUTPUT_DIR/checkpoints)")
    parser.add_argument("--checkpoint-every-n-steps", type=int, default=None,
                        help="also checkpoint mid-epoch every n steps")
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
    train, val = load_data(args.seed)
    model = build_model()
    trainer = htf.Trainer(
        model, keras.optimizers.SGD(learning_rate=args.lr, momentum=0.9),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True), train_data=train, val_data=val,
        batch_size=args.batch_size, max_epochs=args.epochs, metrics={"accuracy": htf.accuracy}, seed=args.seed,
        warmup_epochs=args.warmup_epochs, checkpoint_dir=args.checkpoint_dir or args.output_dir / "checkpoints",
        checkpoint_every_n_steps=args.checkpoint_every_n_steps, monitor="val_accuracy", resume=args.resume,
        early_stopping_patience=args.patience, log_dir=args.output_dir, progress=not args.no_progress)
    history = trainer.fit()
    if backend.rank == 0 and history:
        print(f"final val_accuracy={history[-1]['val_accuracy']:.4f} after {len(history)} epochs "
              f"on {backend.size} workers", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
