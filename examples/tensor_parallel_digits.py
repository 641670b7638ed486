"""Tensor parallelism: the digits MLP's wide layers split across workers (Megatron-style), in the same Trainer.

The hidden layers are a ColumnParallelLinear (each worker holds a slice of the output features) and a
RowParallelLinear (a slice of the input features): one allreduce forward and one backward per pair,
and no worker holds either whole weight. The workers are --tensor slices x replicas, so -np 4 --tensor 2
trains 2 data-parallel replicas of a model split in 2; each replica's gradients are averaged with the
replicas that hold the same slice.

    hvdtrain run -np 2 examples/tensor_parallel_digits.py --tensor 2
    hvdtrain run -np 4 examples/tensor_parallel_digits.py --tensor 2
    horovodrun -np 2 python examples/tensor_parallel_digits.py --tensor 2
"""
from __future__ import annotations

import sys

from hvdtrain.script import parse_training_args, training_parser


def main(argv: list[str] | None = None) -> int:
    parser = training_parser(__doc__, output_dir="runs/tensor_parallel_digits", epochs=30, lr=0.05,
                             warmup_epochs=2.0, monitor="val_accuracy")
    parser.add_argument("--tensor", type=int, default=2, help="workers each hidden layer is split across")
    parser.add_argument("--hidden", type=int, default=256, help="hidden width (a multiple of --tensor)")
    args = parse_training_args(parser, argv)
    import torch
    from torch import nn

    import hvdtrain.torch as ht
    from hvdtrain.datasets import digits
    from hvdtrain.torch.tensor_parallel import ColumnParallelLinear, RowParallelLinear, TensorGroup

    backend = ht.init(tensor=args.tensor)
    group = TensorGroup.of(backend)
    train, val = (tuple(torch.from_numpy(a) for a in split) for split in digits(args.seed))
    torch.manual_seed(args.seed)  # every worker draws the same dense layers, and keeps its slices of them
    model = nn.Sequential(
        ColumnParallelLinear.from_dense(nn.Linear(64, args.hidden), group),
        nn.ReLU(),
        RowParallelLinear.from_dense(nn.Linear(args.hidden, 128), group),  # whole output on every worker
        nn.ReLU(),
        nn.Linear(128, 10),  # replicated: small layers need no splitting
    )
    trainer = ht.Trainer(model, torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9),
                         nn.functional.cross_entropy, train_data=train, val_data=val,
                         metrics={"accuracy": ht.accuracy}, options=args.options)
    history = trainer.fit()
    if backend.rank == 0 and history:
        print(f"final val_accuracy={history[-1]['val_accuracy']:.4f} after {len(history)} epochs on "
              f"{backend.layout.describe()}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
