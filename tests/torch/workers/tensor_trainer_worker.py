"""The Trainer on a column -> row tensor-parallel MLP (``--tensor T``), or on its dense twin (``--tensor 1``).

Every rank draws the same dense layers (float64, one seed) and, with T > 1, keeps its slices of them.
It trains with SGD with momentum, warmup and clipping, and reports its parameters by name with its
place in the layout, so the test can join the slices into the dense model's weights.
"""
from __future__ import annotations

import torch
from torch import nn

import hvdtrain.torch as ht
from hvdtrain.torch.tensor_parallel import ColumnParallelLinear, RowParallelLinear, TensorGroup
from tests.launch import report
from tests.probes import make_data, probe_callbacks, run_reporting_errors, worker_parser


def model(tensor: int, backend) -> nn.Module:
    torch.manual_seed(3)
    dense = [nn.Linear(10, 12), nn.ReLU(), nn.Linear(12, 6), nn.Tanh(), nn.Linear(6, 2)]
    if tensor > 1:
        group = TensorGroup.of(backend)
        dense[0] = ColumnParallelLinear.from_dense(dense[0], group)
        dense[2] = RowParallelLinear.from_dense(dense[2], group)
    return nn.Sequential(*dense).double()


def train(args, backend) -> None:
    net = model(args.tensor, backend)
    _, callbacks = probe_callbacks(args)
    x, y = make_data(0, 240)
    trainer = ht.Trainer(net, torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9), nn.functional.cross_entropy,
                         train_data=(torch.from_numpy(x).double(), torch.from_numpy(y)), batch_size=10,
                         epochs=args.epochs, seed=7, warmup_epochs=1, grad_clip_norm=0.5, callbacks=callbacks,
                         checkpoint_dir=args.checkpoint_dir, checkpoint_every_n_steps=args.every_n_steps,
                         resume=args.resume, progress=False)
    history = trainer.fit()
    predicted = trainer.predict((torch.from_numpy(x[:37]).double(),), all_ranks=True)
    layout = backend.layout
    report({"rank": backend.rank, "tensor_rank": layout.tensor_rank, "data_rank": layout.data_rank,
            "global_step": trainer.ctx.global_step, "resumed_from": trainer.ctx.resumed_from,
            "val": history[-1] if history else None, "predicted_rows": len(predicted),
            "params": {name: p.detach().tolist() for name, p in net.named_parameters()}})


def main() -> None:
    parser = worker_parser()
    parser.add_argument("--tensor", type=int, default=1)
    args = parser.parse_args()
    backend = ht.init(tensor=args.tensor)
    run_reporting_errors(args, backend, lambda: train(args, backend))


if __name__ == "__main__":
    main()
