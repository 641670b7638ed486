"""Pipeline parallelism: the digits MLP split into stages on different workers, trained by the same Trainer.

Each model replica is cut into --stages pipeline stages (consecutive runs of layers); the workers are
stages x replicas, so -np 4 --stages 2 trains 2 replicas of a 2-stage pipeline. Every batch is cut into
--micro-batches that flow through the stages in the --schedule order (1f1b or gpipe). Needs an MPI
launch: the stages send activations to each other with mpi4py.

    hvdtrain run -np 2 examples/pipeline_digits.py --stages 2
    hvdtrain run -np 4 examples/pipeline_digits.py --stages 2 --micro-batches 4 --schedule gpipe
    mpirun -np 2 python examples/pipeline_digits.py --stages 2
"""
from __future__ import annotations

import sys

from hvdtrain.script import parse_training_args, training_parser


def main(argv: list[str] | None = None) -> int:
    parser = training_parser(__doc__, output_dir="runs/pipeline_digits", epochs=30, lr=0.05, warmup_epochs=2.0,
                             monitor="val_accuracy", micro_batches=4)
    parser.add_argument("--stages", type=int, default=2, help="pipeline stages per model replica")
    args = parse_training_args(parser, argv)
    import torch
    from torch import nn

    import hvdtrain.torch as ht
    from hvdtrain.datasets import digits

    backend = ht.init(pipeline=args.stages)
    train, val = (tuple(torch.from_numpy(a) for a in split) for split in digits(args.seed))

    # The layers, as constructors: each rank builds only its own stage's run of them, so a model too big
    # for one worker is never built whole.
    layers = [lambda: nn.Linear(64, 256), nn.ReLU, lambda: nn.Linear(256, 128), nn.ReLU, lambda: nn.Linear(128, 10)]

    def build_stage(stage: int) -> nn.Module:
        torch.manual_seed(args.seed + stage)
        first, last = stage * len(layers) // args.stages, (stage + 1) * len(layers) // args.stages
        return nn.Sequential(*(make() for make in layers[first:last]))

    trainer = ht.Trainer(build_stage, lambda params: torch.optim.SGD(params, lr=args.lr, momentum=0.9),
                         nn.functional.cross_entropy, train_data=train, val_data=val,
                         metrics={"accuracy": ht.accuracy}, options=args.options)
    history = trainer.fit()
    if backend.rank == 0 and history:
        layout = backend.layout
        print(f"final val_accuracy={history[-1]['val_accuracy']:.4f} after {len(history)} epochs on "
              f"{layout.describe()}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
