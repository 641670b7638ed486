"""ElasticState in one process: a commit is a copy, restore returns to it, sync keeps it, and a world-size
change rescales the LRs and tells the callbacks."""
from __future__ import annotations

import torch
from torch import nn

import hvdtrain.torch as ht
from hvdtrain.callbacks import Callback
from hvdtrain.core.elastic import ElasticState


class Heard(Callback):
    def __init__(self):
        self.changes = []

    def on_world_change(self, ctx, old_size, new_size):
        self.changes.append((old_size, new_size))


def _trainer(callbacks=()):
    torch.manual_seed(0)
    x, y = torch.randn(64, 4), torch.randint(0, 2, (64,))
    model = nn.Linear(4, 2)
    return ht.Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), nn.functional.cross_entropy,
                      train_data=(x, y), batch_size=8, epochs=2, progress=False, callbacks=callbacks,
                      backend=ht.SerialBackend())


def _started(trainer):
    """The trainer's ElasticState, after the train-begin hooks ran (as fit() runs them first)."""
    trainer.callbacks.on_train_begin(trainer.ctx)
    return ElasticState(trainer.ctx, trainer._model_specs, trainer._after_elastic_load)


def _params(model):
    return torch.cat([p.detach().reshape(-1).clone() for p in model.parameters()])


def test_restore_returns_to_the_commit_and_sync_keeps_it():
    trainer = _trainer()
    ctx = trainer.ctx
    state = _started(trainer)
    state.sync()
    committed = _params(trainer.model)
    trainer._train_epochs()
    assert ctx.global_step == 16 and not torch.equal(_params(trainer.model), committed)
    state.restore()
    assert torch.equal(_params(trainer.model), committed)
    assert (ctx.epoch, ctx.global_step, ctx.samples_seen_in_epoch, ctx.history) == (0, 0, 0, [])
    state.sync()
    assert torch.equal(_params(trainer.model), committed)


def test_a_stop_agreed_after_the_commit_is_rolled_back_and_the_replayed_epochs_run():
    # A survivor can agree a stop in the step a lost worker broke; the replay from the commit decides again.
    trainer = _trainer()
    ctx = trainer.ctx
    state = _started(trainer)
    state.sync()
    ctx.stop_agreed("non-finite loss on rank 0 at step 3")
    state.restore()
    assert not ctx.stop_training and ctx.stop_reason is None
    trainer._train_epochs()
    assert len(ctx.history) == 2


def test_a_stop_requested_before_the_commit_is_still_requested_after_a_rollback():
    trainer = _trainer()
    ctx = trainer.ctx
    state = _started(trainer)
    ctx.request_stop("early stopping: loss did not improve for 3 epochs")
    state.sync()
    ctx.agree_on_stop()
    state.restore()
    assert not ctx.stop_training
    assert ctx.agree_on_stop() and ctx.stop_reason.startswith("early stopping")


def test_a_commit_from_a_larger_world_rescales_the_learning_rate_and_tells_the_callbacks():
    heard = Heard()
    trainer = _trainer([heard])
    state = _started(trainer)
    state.save()
    state._committed["world_size"] = 4  # as if written by 4 workers, loaded by this one
    state.restore()
    assert heard.changes == [(4, 1)]
    assert trainer.optimizer.param_groups[0]["lr"] == 0.1 / 4


def test_a_world_rebuilt_without_a_sync_loads_the_commit_for_the_new_size():
    heard = Heard()
    trainer = _trainer([heard])
    state = _started(trainer)
    state.adopt_world()
    assert heard.changes == []  # nothing committed yet
    state.sync()
    state._committed["world_size"] = state._state_world = 2  # committed by 2 workers; Horovod skipped the sync
    state.adopt_world()
    assert heard.changes == [(2, 1)] and trainer.optimizer.param_groups[0]["lr"] == 0.1 / 2
    state.adopt_world()
    assert heard.changes == [(2, 1)], "once"


def test_without_the_scaling_rule_a_world_change_leaves_the_learning_rate():
    trainer = _trainer()
    trainer.ctx.scale_lr = False  # as scale_lr=False sets it
    state = _started(trainer)
    state.save()
    state._committed["world_size"] = 4
    state.restore()
    assert trainer.optimizer.param_groups[0]["lr"] == 0.1
