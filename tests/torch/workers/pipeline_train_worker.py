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
    p.add_argument("--predict", action="store_true", help="then predict the validation inputs on every rank")
    p.add_argument("--precision", default="32")
    args = p.parse_args()
    backend = ht.init(pipeline=args.stages)
    layout = backend.layout
    train = tuple(torch.from_numpy(a) for a in make_data(0, 300))
    val = tuple(torch.from_numpy(a) for a in make_data(1, 100))

    def build_stage(stage: int) -> nn.Module:
        torch.manual_seed(100 * stage + layout.data_rank)  # replicas differ: the initial broadcast must fix it
        layers = [nn.Linear(10, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 2)]
        first, last = stage * len(layers) // args.stages, (stage + 1) * len(layers) // args.stages
        return nn.Sequential(*layers[first:last])

    calls = {"loss": 0}

    def loss_fn(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Cross-entropy; with --nan-at-step, NaN for the micro-batches of that step on the last stage."""
        calls["loss"] += 1
        loss = nn.functional.cross_entropy(outputs, targets)
        step = (calls["loss"] - 1) // args.micro_batches + 1
        return loss * float("nan") if step == args.nan_at_step else loss

    recorder, probes = probe_callbacks(args)
    trainer = ht.Trainer(build_stage, lambda params: torch.optim.SGD(params, lr=0.05, momentum=0.9),
                         loss_fn, train, val, metrics={"accuracy": ht.accuracy},
                         callbacks=probes, epochs=args.epochs, batch_size=16, checkpoint_dir=args.checkpoint_dir,
                         checkpoint_every_n_steps=args.every_n_steps, resume=args.resume,
                         warmup_epochs=args.warmup_epochs, micro_batches=args.micro_batches,
                         pipeline_schedule=args.schedule, precision=args.precision, progress=False)
    run_reporting_errors(args, backend, trainer.fit)
    flat = torch.cat([q.detach().reshape(-1) for q in trainer.model.parameters()])
    predicted = trainer.predict(val, all_ranks=True) if args.predict else None
    scaler = trainer.precision.scaler
    report({"rank": layout.rank, "stage": layout.stage, "replica": layout.data_rank, "params": flat.tolist(),
            "global_step": trainer.ctx.global_step,
            "loss_scale": scaler.get_scale() if scaler else None, "resumed_from": trainer.ctx.resumed_from,
            "history": trainer.ctx.history, "lrs": recorder.lrs, "stop_reason": trainer.ctx.stop_reason,
            "predicted": None if predicted is None else predicted.argmax(1).tolist()})


if __name__ == "__main__":
    main()
