"""Train an MLP on scikit-learn's digits (bundled, no download) with hvdtrain's PyTorch Trainer.

    horovodrun -np 2 python examples/pytorch_digits.py
    mpirun -np 2 python examples/pytorch_digits.py --epochs 30 --output-dir runs/digits --resume
    hvdtrain run -np 2 examples/pytorch_digits.py
"""
from __future__ import annotations

import sys

from hvdtrain.script import parse_training_args, training_parser


def main(argv: list[str] | None = None) -> int:
    parser = training_parser(__doc__, output_dir="runs/pytorch_digits", epochs=30, lr=0.05, warmup_epochs=2.0,
                             monitor="val_accuracy")
    args = parse_training_args(parser, argv)
    import torch
    from torch import nn

    import hvdtrain.torch as ht
    from hvdtrain.datasets import digits

    backend = ht.init()
    torch.manual_seed(args.seed)
    train, val = (tuple(torch.from_numpy(a) for a in split) for split in digits(args.seed))
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Dropout(0.1), nn.Linear(128, 10))
    trainer = ht.Trainer(model, torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9),
                         nn.functional.cross_entropy, train_data=train, val_data=val,
                         metrics={"accuracy": ht.accuracy}, options=args.options)
    history = trainer.fit()
    if backend.rank == 0 and history:
        print(f"final val_accuracy={history[-1]['val_accuracy']:.4f} after {len(history)} epochs "
              f"on {backend.size} worker{'s' * (backend.size != 1)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
