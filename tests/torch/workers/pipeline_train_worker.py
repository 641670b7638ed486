"""A pipeline-parallel training job for the multi-process tests: checkpoints, resume, faults. RESULT per rank."""
from __future__ import annotations

import torch
from torch import nn

import hvdtrain.torch as ht
from tests.launch import report
from tests.probes import make_data, probe_callbacks, run_reporting_errors, worker_parser


def main() -> None:
    p = worker_parser()
    p.add_argument("--stages", type=int, default=2)
    p.add_argument("--schedule", default="1f1b")
    p.add_argument("--micro-batches", type=int, default=3)
    args = p.parse_args()
    backend = ht.init(pipeline=args.stages)
    layout = backend.layout
    train = tuple(torch.from_numpy(a) for a in make_data(0, 300))
    val = tuple(torch.from_numpy(a) for a in make_data(1, 100))

    def build_stage(stage: int) -> nn.Module:
        torch.manual_seed(100 * stage + layout.replica)  # replicas differ: the initial broadcast must fix it
        layers = [nn.Linear(10, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 2)]
        first, last = stage * len(layers) // args.stages, (stage + 1) * len(layers) // args.stages
        return nn.Sequential(*layers[first:last])

    recorder, probes = probe_callbacks(args)
    trainer = ht.Trainer(build_stage, lambda params: torch.optim.SGD(params, lr=0.05, momentum=0.9),
                         nn.functional.cross_entropy, train, val, metrics={"accuracy": ht.accuracy},
                         callbacks=probes, epochs=args.epochs, batch_size=16, checkpoint_dir=args.checkpoint_dir,
                         checkpoint_every_n_steps=args.every_n_steps, resume=args.resume,
                         warmup_epochs=args.warmup_epochs, micro_batches=args.micro_batches,
                         pipeline_schedule=args.schedule, progress=False)
    run_reporting_errors(args, backend, trainer.fit)
    flat = torch.cat([q.detach().reshape(-1) for q in trainer.model.parameters()])
    report({"rank": layout.rank, "stage": layout.stage, "replica": layout.replica, "params": flat.tolist(),
            "global_step": trainer.ctx.global_step, "resumed_from": trainer.ctx.resumed_from,
            "history": trainer.ctx.history, "lrs": recorder.lrs})


if __name__ == "__main__":
    main()
