"""Train an MLP on scikit-learn's digits (bundled, no download) in hvdtrain's custom TensorFlow loop.

The loop is ``hvdtrain.tensorflow.Trainer``: a compiled ``tf.GradientTape`` step whose gradients are
averaged with one Horovod grouped allreduce, with hvdtrain's callbacks and exact (mid-epoch) resume.

    horovodrun -np 2 python examples/tensorflow_digits.py
    mpirun -np 2 python examples/tensorflow_digits.py --epochs 30 --output-dir runs/tf_digits --resume
    hvdtrain run -np 2 examples/tensorflow_digits.py
"""
from __future__ import annotations

import os
import sys

from hvdtrain.script import parse_training_args, training_parser


def main(argv: list[str] | None = None) -> int:
    parser = training_parser(__doc__, output_dir="runs/tensorflow_digits", epochs=20, lr=0.05, warmup_epochs=2.0,
                             monitor="val_accuracy")
    args = parse_training_args(parser, argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow is imported
    import keras

    import hvdtrain.tensorflow as htf
    from hvdtrain.datasets import digits

    backend = htf.init()  # before any model: it sizes TensorFlow's thread pools
    htf.set_precision(args.options.precision)  # before any model: Keras fixes each layer's dtype policy
    keras.utils.set_random_seed(args.seed)
    train, val = digits(args.seed)
    model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(128, activation="relu"),
                              keras.layers.Dropout(0.1), keras.layers.Dense(10)])
    trainer = htf.Trainer(model, keras.optimizers.SGD(momentum=0.9),
                          keras.losses.SparseCategoricalCrossentropy(from_logits=True), train_data=train,
                          val_data=val, metrics={"accuracy": htf.accuracy}, options=args.options)
    history = trainer.fit()
    if backend.rank == 0 and history:
        print(f"final val_accuracy={history[-1]['val_accuracy']:.4f} after {len(history)} epochs "
              f"on {backend.size} worker{'s' * (backend.size != 1)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
