"""A configurable training job for the multi-process PyTorch tests; prints RESULT {json} per rank."""
from __future__ import annotations

import hashlib

import torch
from torch import nn

import hvdtrain.torch as ht
from tests.launch import report
from tests.probes import hidden_width, make_data, probe_callbacks, run_reporting_errors, worker_parser


def make_tensors(seed: int, n: int = 300):
    return tuple(torch.from_numpy(a) for a in make_data(seed, n))


def param_digest(model: nn.Module) -> tuple[str, list[float]]:
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()]).cpu()
    return hashlib.sha256(flat.numpy().tobytes()).hexdigest(), flat[:5].tolist()


def build_model(args, rank: int) -> nn.Module:
    torch.manual_seed(1234 + rank)  # different init per rank: broadcast must fix it
    hidden = hidden_width(args, rank)
    layers = [nn.Linear(10, hidden), nn.ReLU(), nn.Dropout(0.2), nn.Linear(hidden, 2)]
    if args.rank1_extra_layer and rank == 1:
        layers.append(nn.Linear(2, 2))
    return nn.Sequential(*layers)


def main() -> None:
    p = worker_parser()
    p.add_argument("--no-metric-average", action="store_true")
    p.add_argument("--precision", default="32")
    p.add_argument("--init-scale", type=float, help="the fp16 loss scaler's first scale")
    p.add_argument("--device", help="default: cuda:<local_rank> with CUDA, else cpu")
    p.add_argument("--onecycle", action="store_true", help="drive the LR with torch's OneCycleLR")
    p.add_argument("--shard", type=int, default=0, help="shard_optimizer_state (ZeRO stage)")
    p.add_argument("--predict", action="store_true",
                   help="after training, predict(all_ranks=True) on 101 samples and the model on all of them")
    args = p.parse_args()
    backend = ht.init()
    run_reporting_errors(args, backend, lambda: train(args, backend))


def train(args, backend) -> None:
    model = build_model(args, backend.rank)
    loss_fn = nn.functional.cross_entropy
    if args.nan_at_step is not None:
        state = {"calls": 0}

        def loss_fn(out, y, _state=state):
            _state["calls"] += 1
            loss = nn.functional.cross_entropy(out, y)
            if _state["calls"] == args.nan_at_step and backend.rank == 1:
                return loss * float("nan")
            return loss

    recorder, callbacks = probe_callbacks(args)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    scheduler = (torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=0.02, total_steps=10 * args.epochs)
                 if args.onecycle else None)
    trainer = ht.Trainer(model, optimizer, loss_fn, train_data=make_tensors(0), lr_scheduler=scheduler,
                         val_data=make_tensors(1, 100), batch_size=16, epochs=args.epochs, seed=7,
                         callbacks=callbacks, warmup_epochs=args.warmup_epochs,
                         checkpoint_dir=args.checkpoint_dir, checkpoint_every_n_steps=args.every_n_steps,
                         resume=args.resume, monitor="plateau" if args.patience else "val_loss",
                         early_stopping_patience=args.patience, progress=False, precision=args.precision,
                         device=args.device, commit_every_n_steps=args.commit_every,
                         shard_optimizer_state=args.shard)
    if args.init_scale:
        trainer.precision.scaler = torch.amp.GradScaler(trainer.device.type, init_scale=args.init_scale)
    if args.no_metric_average:
        trainer.callbacks.callbacks = [c for c in trainer.callbacks if type(c).__name__ != "MetricAverage"]
    history = trainer.fit()
    digest, head = param_digest(model)
    predicted = predictions(trainer, model) if args.predict else {}
    report({**predicted,
        "rank": backend.rank, "size": backend.size, "digest": digest, "head": head,
        "global_step": trainer.ctx.global_step, "epoch": trainer.ctx.epoch, "history": history,
        "lrs": recorder.lrs, "steps": recorder.steps, "world_changes": recorder.world_changes,
        "epoch_logs": recorder.epoch_logs, "stop_reason": trainer.ctx.stop_reason,
        "resumed_from": trainer.ctx.resumed_from, "final_lr": trainer.optimizer.param_groups[0]["lr"],
        "scale": trainer.precision.scaler.get_scale() if trainer.precision.scaler else None,
        "devices": sorted({str(p.device) for p in model.parameters()}),
        "params": torch.cat([p.detach().reshape(-1) for p in model.parameters()]).cpu().tolist(),
    })


def predictions(trainer, model: nn.Module) -> dict:
    """``trainer.predict(all_ranks=True)`` on 101 samples (uneven shards), and ``model`` applied to all at once."""
    x, y = make_tensors(2, 101)
    predicted = trainer.predict((x, y), all_ranks=True)
    model.eval()
    with torch.no_grad():
        whole = model(x.to(trainer.device)).cpu()
    return {"predicted": predicted.tolist(), "whole": whole.tolist()}


if __name__ == "__main__":
    main()
