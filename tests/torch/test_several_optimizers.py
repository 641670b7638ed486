"""Several optimizers (a GAN) and steps that drive their optimizers, on the serial backend."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import hvdtrain.torch as ht
from hvdtrain.callbacks import Callback
from hvdtrain.core.checkpoint import CheckpointManager
from hvdtrain.core.checkpoint_io import read_checkpoint
from tests.torch.workers.gan_worker import (
    ParamsAround,
    build_gan,
    flat,
    gan_data,
    gan_optimizers,
    gan_step,
    train_by_hand,
    train_with_trainer,
)


def serial_wrap(name, optimizer):
    return ht.SerialBackend().distributed_optimizer(optimizer, None, compression="none", op="average",
                                                    backward_passes_per_step=1, gradient_predivide_factor=1.0)


def assert_same_params(a: nn.Module, b: nn.Module, atol: float = 1e-6) -> None:
    for (name, x), y in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(x, y, atol=atol, rtol=0, msg=name)


@pytest.mark.parametrize("options", [{}, {"backward_passes_per_step": 2, "grad_clip_norm": 0.05},
                                     {"precision": "16-mixed"}], ids=["plain", "accumulate-clip", "float16"])
def test_a_gan_trained_by_the_trainer_equals_the_same_steps_written_by_hand(options):
    trained = build_gan(0)
    trainer, history = train_with_trainer(trained, ht.SerialBackend(), epochs=3, **options)
    by_hand = build_gan(0)
    train_by_hand(by_hand, serial_wrap, 0, 1, 3, accumulate=options.get("backward_passes_per_step", 1),
                  clip=options.get("grad_clip_norm"), precision=options.get("precision", "32"))
    assert_same_params(trained, by_hand)
    assert set(history[-1]) >= {"loss", "d_loss", "g_loss"}
    assert history[-1]["loss"] == pytest.approx(history[-1]["d_loss"] + history[-1]["g_loss"])
    assert trainer.ctx.global_step == 3 * -(-7 // options.get("backward_passes_per_step", 1))  # 7 batches an epoch


class StepByHand(ht.Trainer):
    def training_step(self, batch, opt):
        loss = nn.functional.mse_loss(self.model(batch[0]), batch[1][:, :1])
        opt.backward(loss)
        opt.step()
        return loss


def regression(trainer_class, **kwargs):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, 1))
    trainer = trainer_class(model, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), train_data=gan_data(),
                            backend=ht.SerialBackend(), progress=False, batch_size=16, epochs=2,
                            backward_passes_per_step=3, grad_clip_norm=0.1, **kwargs)
    trainer.fit()
    return trainer


def test_one_optimizer_driven_by_the_step_equals_the_automatic_step():
    automatic = regression(ht.Trainer, loss_fn=lambda out, y: nn.functional.mse_loss(out, y[:, :1]))
    manual = regression(StepByHand)
    assert manual.manual and not automatic.manual
    assert_same_params(automatic.model, manual.model, atol=0)
    assert manual.ctx.global_step == automatic.ctx.global_step == 2 * 3  # 7 batches: updates at 3, 6, 7


class Rates(Callback):
    def on_batch_begin(self, ctx):
        self.rates = {name: opt.param_groups[0]["lr"] for name, opt in ctx.optimizer.items()}


def test_every_optimizer_gets_the_lr_option_and_schedule_and_the_context_sees_them_all():
    gan, rates = build_gan(0), Rates()
    trainer, history = train_with_trainer(gan, ht.SerialBackend(), [rates], epochs=2, lr=0.02,
                                          lr_schedule=lambda epoch: 0.5 if epoch >= 1 else 1.0)
    assert isinstance(trainer.ctx.optimizer, ht.NamedOptimizers) and trainer.ctx.optimizer is trainer.optimizer
    assert list(trainer.optimizer) == ["discriminator", "generator"]
    assert len(trainer.optimizer.param_groups) == 2
    assert rates.rates == {"discriminator": 0.01, "generator": 0.01}
    assert history[-1]["lr"] == 0.01


class StopAt(Callback):
    def __init__(self, step):
        self.step = step

    def on_batch_end(self, ctx):
        if ctx.global_step == self.step:
            raise KeyboardInterrupt  # a crash


def test_every_optimizers_state_is_checkpointed_and_a_resumed_run_ends_where_an_uninterrupted_one_does(tmp_path):
    reference = build_gan(0)
    train_with_trainer(reference, ht.SerialBackend(), epochs=3, precision="16-mixed")
    interrupted = build_gan(0)
    with pytest.raises(KeyboardInterrupt):
        train_with_trainer(interrupted, ht.SerialBackend(), [StopAt(11)], epochs=3, precision="16-mixed",
                           checkpoint_dir=tmp_path, checkpoint_every_n_steps=10)
    saved = CheckpointManager(tmp_path).checkpoints()[-1]
    assert (saved.epoch, saved.global_step) == (1, 10)  # mid epoch 1 (7 steps an epoch)
    state = ht.TorchAdapter(ht.SerialBackend()).deserialize(read_checkpoint(saved.path)[1])["model_optimizer"]
    assert set(state["optimizer"]) == {"discriminator", "generator"}
    assert all(opt["state"] for opt in state["optimizer"].values()), "Adam's moments of both optimizers"
    resumed = build_gan(1)  # other weights: the checkpoint must replace them
    trainer, _ = train_with_trainer(resumed, ht.SerialBackend(), epochs=3, precision="16-mixed",
                                    checkpoint_dir=tmp_path, resume=True)
    assert trainer.ctx.resumed_from.endswith(saved.path.name)
    assert_same_params(reference, resumed, atol=0)


def test_a_nonfinite_discriminator_loss_skips_its_update_alone_and_stops_training():
    gan, around = build_gan(0), ParamsAround()
    trainer, history = train_with_trainer(gan, ht.SerialBackend(), [around], training_step=gan_step(gan, 3),
                                          epochs=2)
    assert history == [] and trainer.ctx.global_step == 3
    assert trainer.ctx.stop_reason == "non-finite loss on rank 0 at step 3; that step was not applied"
    assert trainer.ctx.outcome.nonfinite_checked and trainer.ctx.outcome.nonfinite_rank == 0
    assert around.after["discriminator"] == around.before["discriminator"]
    assert around.after["generator"] != around.before["generator"], "the generator's loss was finite: it stepped"
    assert all(torch.isfinite(torch.tensor(flat(gan))))


@pytest.mark.parametrize(("misbehave", "error", "message"), [
    (lambda opt, loss: (opt.backward(loss, "discriminator"), opt.backward(loss, "discriminator")), ValueError,
     r"backward\(loss, 'discriminator'\) ran twice in one batch: add the losses"),
    (lambda opt, loss: opt.step("generator"), ValueError, r"step\('generator'\) needs a backward\(loss, 'generator'\)"),
    (lambda opt, loss: opt.backward(loss, "discriminator"), ValueError,
     r"ran backward\(loss, name\) but not step\(name\) for \['discriminator'\]"),
    (lambda opt, loss: opt.backward(loss, "critic"), KeyError,
     r"no optimizer named 'critic': the Trainer's optimizers are \['discriminator', 'generator'\]"),
    (lambda opt, loss: opt.backward(loss), KeyError, "no optimizer named None"),
], ids=["backward-twice", "step-without-backward", "backward-without-step", "unknown-name", "no-name"])
def test_a_step_that_misuses_its_optimizers_is_told_how(misbehave, error, message):
    gan = build_gan(0)

    def step(batch, opt):
        loss = gan["discriminator"](batch[0]).mean()
        misbehave(opt, loss)
        return loss
    with pytest.raises(error, match=message):
        train_with_trainer(gan, ht.SerialBackend(), training_step=step, epochs=1)


def test_several_optimizers_need_a_two_argument_step_and_disjoint_parameters():
    gan = build_gan(0)
    with pytest.raises(TypeError, match=r"with several optimizers, training_step takes \(batch, opt\)"):
        ht.Trainer(gan, gan_optimizers(gan), nn.functional.mse_loss, gan_data(), backend=ht.SerialBackend())
    shared = {"all": torch.optim.SGD(gan.parameters(), lr=0.1), **gan_optimizers(gan)}
    with pytest.raises(ValueError, match=r"parameter 'discriminator\.0\.weight' is in optimizers 'all' and "
                                         r"'discriminator': give each parameter to one optimizer"):
        ht.Trainer(gan, shared, training_step=gan_step(gan), train_data=gan_data(), backend=ht.SerialBackend())
    optimizers = gan_optimizers(gan)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizers["generator"], 1)
    with pytest.raises(TypeError, match="lr_scheduler= drives a single optimizer; with several, use lr_schedule="):
        ht.Trainer(gan, optimizers, training_step=gan_step(gan), train_data=gan_data(), lr_scheduler=scheduler,
                   backend=ht.SerialBackend())


def test_the_saved_state_of_other_optimizers_is_refused_by_name():
    gan = build_gan(0)
    named = ht.NamedOptimizers(gan_optimizers(gan))
    with pytest.raises(ValueError, match=r"the saved optimizer state is one optimizer's state, but this Trainer "
                                         r"has optimizers \['discriminator', 'generator'\]"):
        named.load_state_dict(torch.optim.SGD(gan.parameters(), lr=0.1).state_dict())
    named.load_state_dict(named.state_dict())
