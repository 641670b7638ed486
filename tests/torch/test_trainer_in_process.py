"""The PyTorch Trainer in this process on the serial backend: no Horovod job, no launcher."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import hvdtrain.torch as ht
from hvdtrain.callbacks import Callback
from hvdtrain.core.checkpoint import CheckpointManager
from tests.probes import make_data


def tensors(seed: int, n: int = 120):
    return tuple(torch.from_numpy(a) for a in make_data(seed, n))


def trainer(tmp_path=None, callbacks=(), **options):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 2))
    return ht.Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), nn.functional.cross_entropy,
                      tensors(0), tensors(1, 60), metrics={"accuracy": ht.accuracy}, callbacks=callbacks,
                      backend=ht.SerialBackend(), checkpoint_dir=tmp_path, progress=False,
                      **{"batch_size": 16, **options})


class Steps(Callback):
    def __init__(self):
        self.seen = []

    def on_batch_end(self, ctx):
        self.seen.append((ctx.epoch, ctx.batch_index, ctx.global_step, ctx.outcome.updated))


def test_trains_in_process_and_learns():
    history = trainer(epochs=8).fit()
    assert len(history) == 8
    assert history[-1]["loss"] < history[0]["loss"]
    assert history[-1]["val_accuracy"] > 0.8


def test_global_step_counts_optimizer_steps_with_accumulation_and_checkpoints_fall_on_them(tmp_path):
    steps = Steps()
    run = trainer(tmp_path, [steps], epochs=2, backward_passes_per_step=3, checkpoint_every_n_steps=2)
    run.fit()
    batches = math.ceil(120 / 16)  # 8 batches: updates after batches 3, 6 and the last (8) of each epoch
    assert len(steps.seen) == 2 * batches
    assert [s[3] for s in steps.seen[:batches]] == [False, False, True, False, False, True, False, True]
    assert run.ctx.global_step == 6 and run.ctx.progress.batches_run == 16
    saved = [(i.epoch, i.global_step) for i in CheckpointManager(tmp_path).checkpoints()]
    assert saved[-1] == (2, 6) and all(step % 2 == 0 or epoch == 2 for epoch, step in saved)


def test_resume_mid_epoch_ends_where_an_uninterrupted_run_ends(tmp_path):
    reference = trainer(epochs=3, seed=4)
    reference.fit()
    first = trainer(tmp_path, epochs=3, seed=4, checkpoint_every_n_steps=5)

    class StopAt(Callback):
        def on_batch_end(self, ctx):
            if ctx.global_step == 10:
                raise KeyboardInterrupt  # a crash after the step-10 checkpoint
    first.callbacks.add(StopAt())
    with pytest.raises(KeyboardInterrupt):
        first.fit()
    resumed = trainer(tmp_path, epochs=3, seed=4, resume=True)
    resumed.fit()
    assert resumed.ctx.resumed_from is not None
    for a, b in zip(reference.model.parameters(), resumed.model.parameters()):
        torch.testing.assert_close(a, b)


def test_options_object_and_keywords_are_one_set_and_unknown_ones_are_named():
    options = ht.TrainingOptions(epochs=2, batch_size=8)
    torch.manual_seed(0)
    model = nn.Linear(10, 2)
    built = ht.Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), nn.functional.cross_entropy, tensors(0),
                       backend=ht.SerialBackend(), options=options, batch_size=16, progress=False)
    assert (built.options.epochs, built.options.batch_size) == (2, 16)  # keywords win over options
    with pytest.raises(TypeError, match="unexpected keyword argument 'epoch'; did you mean 'epochs'"):
        ht.Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), nn.functional.cross_entropy, tensors(0),
                   backend=ht.SerialBackend(), epoch=3)


@pytest.mark.parametrize("precision", ["bf16-mixed", "16-mixed"])
def test_mixed_precision_trains_on_the_cpu(precision):
    run = trainer(epochs=8, precision=precision)
    history = run.fit()
    assert history[-1]["val_accuracy"] > 0.8
    assert (run.precision.scaler is not None) == (precision == "16-mixed")


def test_the_loss_scale_is_checkpointed_and_resumed(tmp_path):
    first = trainer(tmp_path, epochs=2, precision="16-mixed")
    first.precision.scaler = torch.amp.GradScaler("cpu", init_scale=1024.0, growth_interval=3)
    first.fit()
    scale = first.precision.scaler.get_scale()
    assert scale > 1024.0  # grown every 3 steps: a scale a fresh scaler would not start from
    resumed = trainer(tmp_path, epochs=3, precision="16-mixed", resume=True)
    resumed.callbacks.on_train_begin(resumed.ctx)
    assert resumed.precision.scaler.get_scale() == scale


def test_a_torch_compiled_model_trains_under_the_trainer():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 2))
    before = [p.detach().clone() for p in model.parameters()]
    run = ht.Trainer(torch.compile(model), torch.optim.SGD(model.parameters(), lr=0.1), nn.functional.cross_entropy,
                     tensors(0), tensors(1, 60), backend=ht.SerialBackend(), epochs=3, batch_size=16, progress=False)
    history = run.fit()
    assert history[-1]["loss"] < history[0]["loss"]
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters())), "the original module trained"


class CountingBackend(ht.SerialBackend):
    """One process's backend, counting the agreements (max-reductions) the training loop asks for."""

    def __init__(self):
        super().__init__()
        self.agreements = 0

    def allreduce_max(self, values):
        self.agreements += 1
        return super().allreduce_max(values)


@pytest.mark.parametrize("passes", [1, 4])
def test_the_non_finite_guard_agrees_once_per_step_not_once_per_accumulated_batch(passes):
    backend = CountingBackend()
    model = nn.Linear(4, 2)
    trainer = ht.Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), nn.functional.cross_entropy,
                         train_data=(torch.randn(64, 4), torch.randint(0, 2, (64,))), batch_size=4, epochs=2,
                         backward_passes_per_step=passes, progress=False, backend=backend)
    trainer.fit()
    assert trainer.ctx.global_step == 32 // passes
    assert backend.agreements == 2  # the epochs' ends; each step's own check rides on its gradients


def test_a_logged_parameter_is_averaged_as_it_was_at_each_batch_not_as_it_ends():
    """Logged values are kept per batch until the epoch's one read: a parameter the optimizer then changes
    in place must count with its value at its batch."""
    torch.manual_seed(0)
    model = nn.Linear(10, 2)
    bias = model.bias
    seen = []

    def step(batch):
        seen.append(float(bias[0].detach()))
        return {"loss": nn.functional.cross_entropy(model(batch[0]), batch[1]), "bias": bias[0]}

    run = ht.Trainer(model, torch.optim.SGD(model.parameters(), lr=0.5), training_step=step, train_data=tensors(0),
                     batch_size=40, epochs=1, backend=ht.SerialBackend(), progress=False)
    history = run.fit()
    assert len(seen) == 3 and seen[0] != seen[-1]
    assert history[0]["bias"] == pytest.approx(sum(seen) / 3, rel=1e-6)


def test_a_batch_that_starts_with_a_scalar_is_counted_by_its_first_tensor_with_samples():
    x, y = tensors(0)
    scale = torch.tensor(2.0)
    counted = []

    class Count(Callback):
        def on_batch_end(self, ctx):
            counted.append(ctx.sample_count)

    model = nn.Linear(10, 2)
    batches = [(scale, x[i:i + 30], y[i:i + 30]) for i in range(0, 120, 30)]
    run = ht.Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), epochs=1,
                     train_data=torch.utils.data.DataLoader(batches, batch_size=None),
                     training_step=lambda b: nn.functional.cross_entropy(model(b[1] * b[0]), b[2]),
                     backend=ht.SerialBackend(), progress=False, callbacks=[Count()])
    run.fit()
    assert counted == [30, 60, 90, 120]
