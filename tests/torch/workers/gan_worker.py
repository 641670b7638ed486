"""A tiny GAN on 2-D points, trained by the Trainer with two optimizers or by a hand-written Horovod loop.

The in-process tests import its pieces; under horovodrun each rank reports its parameters.
"""
from __future__ import annotations

import contextlib

import torch
from torch import nn
from torch.nn.functional import binary_cross_entropy_with_logits as bce

import hvdtrain.torch as ht
from hvdtrain.callbacks import Callback
from tests.launch import report
from tests.probes import probe_callbacks, worker_parser

SEED, BATCH = 7, 16


def gan_data(n: int = 101) -> tuple[torch.Tensor, torch.Tensor]:
    """Real points around (2, -1) and the noise the generator turns into each sample's fake."""
    generator = torch.Generator().manual_seed(3)
    real = torch.randn(n, 2, generator=generator) * 0.5 + torch.tensor([2.0, -1.0])
    return real, torch.randn(n, 4, generator=generator)


def build_gan(seed: int) -> nn.ModuleDict:
    torch.manual_seed(seed)
    return nn.ModuleDict({"discriminator": nn.Sequential(nn.Linear(2, 16), nn.LeakyReLU(0.2), nn.Linear(16, 1)),
                          "generator": nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 2))})


def gan_optimizers(gan: nn.ModuleDict, lr: float = 0.01) -> dict[str, torch.optim.Optimizer]:
    return {name: torch.optim.Adam(gan[name].parameters(), lr=lr, betas=(0.5, 0.999))
            for name in ("discriminator", "generator")}


def discriminator_loss(gan: nn.ModuleDict, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    real_logits, fake_logits = gan["discriminator"](real), gan["discriminator"](fake.detach())
    return bce(real_logits, torch.ones_like(real_logits)) + bce(fake_logits, torch.zeros_like(fake_logits))


def generator_loss(gan: nn.ModuleDict, fake: torch.Tensor) -> torch.Tensor:
    logits = gan["discriminator"](fake)
    return bce(logits, torch.ones_like(logits))


def gan_step(gan: nn.ModuleDict, nan_at_batch: int | None = None):
    """The Trainer's ``training_step(batch, opt)``; the discriminator's loss is NaN at its
    ``nan_at_batch``-th call (1-based)."""
    calls = [0]

    def step(batch, opt):
        real, noise = batch
        calls[0] += 1
        fake = gan["generator"](noise)
        d_loss = discriminator_loss(gan, real, fake)
        if calls[0] == nan_at_batch:
            d_loss = d_loss * float("nan")
        opt.backward(d_loss, "discriminator")
        opt.step("discriminator")
        g_loss = generator_loss(gan, fake)
        opt.backward(g_loss, "generator")
        opt.step("generator")
        return {"loss": d_loss + g_loss, "d_loss": d_loss, "g_loss": g_loss}
    return step


def train_with_trainer(gan, backend, callbacks=(), **options):
    trainer = ht.Trainer(gan, gan_optimizers(gan), training_step=options.pop("training_step", None) or gan_step(gan),
                         train_data=gan_data(), backend=backend, batch_size=BATCH, seed=SEED, progress=False,
                         callbacks=callbacks, **options)
    return trainer, trainer.fit()


@contextlib.contextmanager
def frozen(module: nn.Module):
    """Lightning's toggle_optimizer by hand: ``module``'s parameters get no gradients meanwhile."""
    for p in module.parameters():
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in module.parameters():
            p.requires_grad_(True)


def train_by_hand(gan, wrap, rank: int, size: int, epochs: int, *, accumulate: int = 1, clip: float | None = None,
                  warmup_epochs: float = 0.0, precision: str = "32", broadcast=None) -> None:
    """The reference: the same GAN steps written out, optimizer by optimizer, in Horovod's order.

    Args:
        wrap: ``wrap(name, optimizer)`` returns the optimizer distributed (Horovod's, or the serial twin's).
        broadcast: ``broadcast(optimizer)`` spreads rank 0's optimizer state; None in one process.
    """
    opts = {}
    for name, optimizer in gan_optimizers(gan).items():
        for group in optimizer.param_groups:
            group["lr"] *= size  # the linear scaling rule
        opts[name] = wrap(name, optimizer)
        if broadcast:
            broadcast(opts[name])
    base_lrs = {name: [g["lr"] for g in opt.param_groups] for name, opt in opts.items()}
    scaler = torch.amp.GradScaler("cpu") if precision == "16-mixed" else None
    autocast = (lambda: torch.autocast("cpu", dtype=torch.float16)) if scaler else contextlib.nullcontext

    def backward(loss):
        (scaler.scale(loss) if scaler else loss).backward()

    def apply(name):
        opt = opts[name]
        opt.synchronize()
        if scaler:
            scaler.unscale_(opt)
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(gan[name].parameters(), clip)
        with opt.skip_synchronize():
            scaler.step(opt) if scaler else opt.step()
        opt.zero_grad()

    real, noise = gan_data()
    sampler = ht.DistributedBatchSampler(len(real), rank, size, BATCH, shuffle=True, seed=SEED)
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        sizes = list(sampler.global_batches())
        for i, (indices, global_size) in enumerate(zip(sampler, sizes)):
            if warmup_epochs:
                e = epoch + i / len(sizes)
                factor = 1 / size + (1 - 1 / size) * e / warmup_epochs if e < warmup_epochs else 1.0
                for name, opt in opts.items():
                    for group, lr in zip(opt.param_groups, base_lrs[name]):
                        group["lr"] = lr * factor
            index = torch.tensor(indices)
            weight = len(indices) * size / global_size / accumulate
            update = (i + 1) % accumulate == 0 or i + 1 == len(sizes)
            with autocast():
                fake = gan["generator"](noise[index])
                d_loss = discriminator_loss(gan, real[index], fake)
            backward(d_loss * weight)
            if update:
                apply("discriminator")
            with frozen(gan["discriminator"]):
                with autocast():
                    g_loss = generator_loss(gan, fake)
                backward(g_loss * weight)
            if update:
                apply("generator")
                if scaler:
                    scaler.update()


class ParamsAround(Callback):
    """The discriminator's and generator's parameters before and after the last batch run."""

    def on_batch_begin(self, ctx):
        self.before = {name: flat(ctx.model[name]) for name in ("discriminator", "generator")}

    def on_batch_end(self, ctx):
        self.after = {name: flat(ctx.model[name]) for name in ("discriminator", "generator")}


def flat(module: nn.Module) -> list[float]:
    return torch.cat([p.detach().reshape(-1) for p in module.parameters()]).tolist()


def main() -> None:
    p = worker_parser()
    p.add_argument("--by-hand", action="store_true", help="the hand-written Horovod loop instead of the Trainer")
    p.add_argument("--accumulate", type=int, default=1)
    p.add_argument("--clip", type=float)
    p.add_argument("--precision", default="32")
    args = p.parse_args()
    backend = ht.init()
    gan = build_gan(1234 + backend.rank)  # different per rank: the broadcast must make them equal
    payload = {"rank": backend.rank}
    if args.by_hand:
        import horovod.torch as hvd

        named = dict(gan.named_parameters())

        def wrap(name, optimizer):
            own = [(n, p) for n, p in named.items() if n.startswith(name + ".")]
            return hvd.DistributedOptimizer(optimizer, named_parameters=own, backward_passes_per_step=args.accumulate)
        hvd.broadcast_parameters(gan.state_dict(), root_rank=0)
        train_by_hand(gan, wrap, backend.rank, backend.size, args.epochs, accumulate=args.accumulate,
                      clip=args.clip, warmup_epochs=args.warmup_epochs, precision=args.precision,
                      broadcast=None)  # fresh optimizers have no state to spread (Horovod's
        # broadcast_optimizer_state would create it with a zero-gradient step: Adam's first, in one process none)
    else:
        around = ParamsAround()
        _, callbacks = probe_callbacks(args)
        nan_at_batch = args.nan_at_step if backend.rank == 1 else None
        trainer, history = train_with_trainer(
            gan, backend, [around, *callbacks], training_step=gan_step(gan, nan_at_batch),
            epochs=args.epochs, backward_passes_per_step=args.accumulate, grad_clip_norm=args.clip,
            warmup_epochs=args.warmup_epochs, precision=args.precision, checkpoint_dir=args.checkpoint_dir,
            checkpoint_every_n_steps=args.every_n_steps, resume=args.resume)
        payload.update(history=history, global_step=trainer.ctx.global_step, stop_reason=trainer.ctx.stop_reason,
                       resumed_from=trainer.ctx.resumed_from, before=around.before, after=around.after)
    report({**payload, "params": flat(gan)})


if __name__ == "__main__":
    main()
