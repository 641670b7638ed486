"""Train an MLP on scikit-learn's digits (bundled, no download) with Keras ``model.fit`` and hvdtrain.

``hvdtrain.tensorflow.fit`` shards the arrays across workers, converts the compiled optimizer to average
gradients with Horovod, and runs hvdtrain's callbacks (broadcast, metric averaging, warmup, checkpoints,
logs) inside ``model.fit``. Resume restarts at the epoch of the newest checkpoint.

    horovodrun -np 2 python examples/keras_digits.py
    mpirun -np 2 python examples/keras_digits.py --epochs 30 --output-dir runs/keras_digits --resume
    hvdtrain run -np 2 examples/keras_digits.py
"""
from __future__ import annotations

import os
import sys

from hvdtrain.script import parse_training_args, training_parser


def main(argv: list[str] | None = None) -> int:
    parser = training_parser(__doc__, output_dir="runs/keras_digits", epochs=20, lr=0.05, warmup_epochs=2.0,
                             monitor="val_accuracy")
    args = parse_training_args(parser, argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow is imported
    import keras

    import hvdtrain.tensorflow as htf
    from hvdtrain.datasets import digits

    backend = htf.init()  # before any model: it sizes TensorFlow's thread pools
    htf.set_precision(args.options.precision)  # before any model: Keras fixes each layer's dtype policy
    keras.utils.set_random_seed(args.seed)
    (x_train, y_train), val = digits(args.seed)
    model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(128, activation="relu"),
                              keras.layers.Dropout(0.1), keras.layers.Dense(10)])
    model.compile(optimizer=keras.optimizers.SGD(momentum=0.9),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    history = htf.fit(model, x_train, y_train, validation_data=val, options=args.options, verbose=0)
    accuracies = history.history.get("val_accuracy", [])
    if backend.rank == 0 and accuracies:  # history.epoch: the epochs run now (fewer after a resume)
        print(f"final val_accuracy={accuracies[-1]:.4f} after {history.epoch[-1] + 1} epochs "
              f"on {backend.size} worker{'s' * (backend.size != 1)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
