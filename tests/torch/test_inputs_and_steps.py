"""Input pipelines, custom steps, predict and framework LR schedulers on the serial backend."""
from __future__ import annotations

import logging

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, IterableDataset, SubsetRandomSampler, TensorDataset

import hvdtrain.torch as ht
from hvdtrain.callbacks import Callback
from hvdtrain.torch.inputs import ShardedInput, StreamingInput, batch_len, make_input, to_device
from tests.probes import Recorder, make_data


def tensors(seed: int, n: int = 120):
    return tuple(torch.from_numpy(a) for a in make_data(seed, n))


def model_and_optimizer(lr: float = 0.1):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 2))
    return model, torch.optim.SGD(model.parameters(), lr=lr)


def train(data, **kwargs):
    model, optimizer = model_and_optimizer()
    kwargs.setdefault("loss_fn", nn.functional.cross_entropy)
    trainer = ht.Trainer(model, optimizer, train_data=data, backend=ht.SerialBackend(), progress=False,
                         **{"batch_size": 16, "epochs": 2, **kwargs})
    return trainer, trainer.fit()


class Rows(IterableDataset):
    def __iter__(self):
        yield from zip(*tensors(0, 100))


def test_nested_batches_move_and_count():
    batch = {"x": (torch.ones(3, 2), [torch.zeros(3)]), "meta": "name"}
    moved = to_device(batch, torch.device("cpu"))
    assert moved["meta"] == "name" and moved["x"][1][0].shape == (3,)
    assert batch_len(batch) == 3 and batch_len({"meta": "name", "y": torch.ones(5)}) == 5
    with pytest.raises(TypeError, match="a batch must be a tensor or a tuple, list or dict holding tensors"):
        batch_len({"meta": "name"})


def test_a_standard_dataloader_is_resharded_and_a_custom_sampler_is_streamed(caplog):
    data = TensorDataset(*tensors(0, 100))
    resharded = make_input(DataLoader(data, batch_size=10, shuffle=True), rank=1, size=2, batch_size=99,
                           shuffle=True, seed=0)
    assert isinstance(resharded, ShardedInput) and resharded.set_epoch(0, 0, 0) == 5
    assert [batch_len(b) for b, _ in resharded] == [10] * 5  # the loader's batch size, half the data
    with caplog.at_level(logging.WARNING):
        streamed = make_input(DataLoader(data, batch_size=10, sampler=SubsetRandomSampler(range(30))), rank=0,
                              size=2, batch_size=10, shuffle=True, seed=0)
    assert isinstance(streamed, StreamingInput)
    assert "cannot re-shard this DataLoader (it has a custom sampler (SubsetRandomSampler))" in caplog.text
    assert [has_next for _, has_next in streamed] == [True, True, False]


class WhereRead(Dataset):
    """Sample i is (i, the process that read it)."""

    def __len__(self):
        return 24

    def __getitem__(self, index):
        import os
        return torch.tensor(index), torch.tensor(os.getpid())


def test_a_dataset_read_by_loader_workers_forks_them_once_and_reshuffles_every_epoch():
    data = make_input(WhereRead(), rank=0, size=1, batch_size=8, shuffle=True, seed=0, num_workers=1)
    epochs = []
    for epoch in range(2):
        data.set_epoch(epoch, 0, 0)
        batches = [batch for batch, _ in data]
        epochs.append((torch.cat([index for index, _ in batches]).tolist(),
                       set(torch.cat([pid for _, pid in batches]).tolist())))
    (first, readers), (second, readers_again) = epochs
    assert sorted(first) == sorted(second) == list(range(24)) and first != second
    assert len(readers) == 1 and readers == readers_again  # one worker process, kept for the next epoch


class LabelledWhereRead(Dataset):
    """(features, label, the process that read the sample)."""

    def __init__(self):
        self.x, self.y = tensors(0, 48)

    def __len__(self):
        return len(self.y)

    def __getitem__(self, index):
        import os
        return self.x[index], self.y[index], torch.tensor(float(os.getpid()), dtype=torch.float64)


class ReaderLogging(ht.Trainer):
    def training_step(self, batch):
        x, y, reader = batch
        return {"loss": nn.functional.cross_entropy(self.model(x), y), "reader": reader.mean()}

    validation_step = training_step


def test_the_trainer_keeps_its_loader_workers_for_training_and_validation_across_epochs():
    model, optimizer = model_and_optimizer()
    history = ReaderLogging(model, optimizer, train_data=LabelledWhereRead(), val_data=LabelledWhereRead(),
                            backend=ht.SerialBackend(), progress=False, batch_size=16, epochs=3,
                            num_workers=1).fit()
    train_readers = {round(epoch["reader"]) for epoch in history}
    val_readers = {round(epoch["val_reader"]) for epoch in history}
    assert len(train_readers) == len(val_readers) == 1 and train_readers != val_readers, history


def test_an_iterable_dataset_trains_and_resumes_its_stream_where_it_stopped():
    trainer, history = train(Rows())
    assert trainer.ctx.global_step == 2 * 7 and trainer.ctx.steps_per_epoch is None
    assert history[-1]["loss"] < history[0]["loss"]
    trainer.train_input.set_epoch(0, 0, batches_done=5)
    assert [batch_len(b) for b, _ in trainer.train_input] == [16, 4]


def test_a_custom_step_as_a_subclass_logs_several_values_and_predict_keeps_sample_order():
    class TwoLosses(ht.Trainer):
        def training_step(self, batch):
            x, y = batch
            ce = nn.functional.cross_entropy(self.model(x), y)
            return {"loss": ce + 0.0, "ce": ce, "half": ce / 2}

        def validation_step(self, batch):
            return {"err": (self.model(batch[0]).argmax(1) != batch[1]).float().mean()}

    model, optimizer = model_and_optimizer()
    trainer = TwoLosses(model, optimizer, train_data=tensors(0), val_data=tensors(1, 50),
                        backend=ht.SerialBackend(), progress=False, batch_size=16, epochs=2)
    history = trainer.fit()
    assert set(history[-1]) >= {"loss", "ce", "half", "val_err"}
    assert history[-1]["half"] == pytest.approx(history[-1]["ce"] / 2)
    x, _ = tensors(1, 50)
    predicted = trainer.predict(TensorDataset(x, torch.zeros(50)))
    torch.testing.assert_close(predicted, model(x).detach())


def test_a_step_function_must_return_the_loss_and_the_default_step_names_its_batch_problem():
    model, optimizer = model_and_optimizer()
    with pytest.raises(TypeError, match="needs loss_fn= for its default step"):
        ht.Trainer(model, optimizer, train_data=tensors(0), backend=ht.SerialBackend())
    with pytest.raises(TypeError, match=r"must return the loss tensor or a dict with a 'loss' entry \(got \['ce'\]\)"):
        train(tensors(0), training_step=lambda b: {"ce": torch.ones(())})
    dicts = DictRows()
    with pytest.raises(TypeError, match="the default training_step takes \\(inputs, targets\\) batches, not dict"):
        train(dicts)


class DictRows(Dataset):
    def __len__(self):
        return 32

    def __getitem__(self, i):
        return {"x": torch.zeros(10), "y": 0}


class LrAtBatches(Recorder):
    def on_train_end(self, ctx):
        self.final = ctx.adapter.get_learning_rates(ctx.optimizer)[0]


def onecycle_trainer(tmp_path, epochs=3, **kwargs):
    model, optimizer = model_and_optimizer(lr=0.01)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=0.2, total_steps=epochs * 8)
    recorder = LrAtBatches()
    trainer = ht.Trainer(model, optimizer, nn.functional.cross_entropy, tensors(0), lr_scheduler=scheduler,
                         callbacks=[recorder], backend=ht.SerialBackend(), progress=False, batch_size=16,
                         epochs=epochs, checkpoint_dir=tmp_path, **kwargs)
    return trainer, recorder, scheduler


def test_a_torch_scheduler_drives_the_lr_with_hvdtrain_multiplier_on_top(tmp_path):
    plain, plain_recorder, _ = onecycle_trainer(tmp_path / "plain")
    plain.fit()
    assert plain_recorder.lrs[0] == pytest.approx(0.2 / 25)  # OneCycleLR's start: max_lr / div_factor
    assert max(plain_recorder.lrs) == pytest.approx(0.2, rel=0.05)
    halved, recorder, _ = onecycle_trainer(tmp_path, lr_schedule=lambda epoch: 0.5 if epoch >= 1 else 1.0)
    halved.fit()
    expected = [lr * (0.5 if i >= 8 else 1.0) for i, lr in enumerate(plain_recorder.lrs)]
    assert recorder.lrs == pytest.approx(expected)


def test_resume_mid_epoch_continues_the_torch_schedule_exactly(tmp_path):
    reference, ref_recorder, _ = onecycle_trainer(tmp_path / "ref")
    reference.fit()

    class StopAt(Callback):
        def on_batch_end(self, ctx):
            if ctx.global_step == 12:
                raise KeyboardInterrupt  # a crash after the step-11 checkpoint, mid epoch 1
    first, _, _ = onecycle_trainer(tmp_path / "run", checkpoint_every_n_steps=11)
    first.callbacks.add(StopAt())
    with pytest.raises(KeyboardInterrupt):
        first.fit()
    resumed, recorder, _ = onecycle_trainer(tmp_path / "run", resume=True)
    resumed.fit()
    assert recorder.lrs == pytest.approx(ref_recorder.lrs[11:])
    assert recorder.final == pytest.approx(ref_recorder.final)
    for a, b in zip(reference.model.parameters(), resumed.model.parameters()):
        torch.testing.assert_close(a, b)
