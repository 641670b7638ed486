"""Elastic training's state: in-memory commits that a lost worker rolls back to and a new worker syncs from.

A commit is an in-memory checkpoint: the model and optimizer (through the adapter's safe encoding,
so it is a copy on the host), the progress, the history, a requested stop and the callbacks' state, plus this rank's
RNG. After a failure the survivors ``restore`` their last commit; after the world is rebuilt every
rank ``sync``s rank 0's commit. When the world size changed, the data is re-sharded from the
progress (the remaining samples of the epoch over the new ranks), the learning rates are rescaled
as on a resume, and the callbacks hear ``on_world_change``.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from hvdtrain.core.agreement import check_ranks_agree
from hvdtrain.core.checkpoint_io import CheckpointError
from hvdtrain.core.context import TrainContext

log = logging.getLogger("hvdtrain")


class ElasticState:
    """What elastic training commits, restores and syncs; the backend's elastic run drives it.

    Args:
        ctx: the run's context (its model, optimizer, progress and callbacks are committed).
        specs: the (name, shape, dtype) of every model tensor, checked equal on all ranks at a sync.
        after_load: the loop's hook after a commit was loaded (drop partial gradients, re-shard the
            data for the current ranks); takes the world size the commit was made with.
        commit_every_n_steps: commit after every n-th optimizer step too (None: at epoch ends only).
    """

    def __init__(self, ctx: TrainContext, specs: Callable[[], list[Any]],
                 after_load: Callable[[int], None], commit_every_n_steps: int | None = None) -> None:
        self.ctx = ctx
        self.specs = specs
        self.after_load = after_load
        self.commit_every_n_steps = commit_every_n_steps
        self.check_host_updates: Callable[[], None] = lambda: None  # set by the backend's elastic run
        self._committed: dict[str, Any] | None = None
        self._rng: Any = None
        self._state_world: int | None = None  # the world size the live LRs are scaled for

    def commit(self) -> None:
        """Collective: keep the state in memory, then learn (all ranks alike) whether hosts changed.

        Raises:
            Exception: the backend's "hosts updated" interrupt, on every rank at once.
        """
        self.save()
        self.check_host_updates()

    def due_after_batch(self) -> bool:
        """Whether the batch just finished ends a commit interval: an optimizer step, training going on, and
        not the epoch's last batch (the epoch's end commits; a rollback there would skip the epoch's end)."""
        ctx, every, last = self.ctx, self.commit_every_n_steps, self.ctx.steps_per_epoch
        return (bool(every) and ctx.outcome.updated and ctx.global_step % every == 0 and not ctx.stop_training
                and (last is None or ctx.progress.batches_done < last))

    def due_after_epoch(self) -> bool:
        """Whether to commit at the end of the epoch just finished: another epoch follows."""
        return not self.ctx.stop_training and self.ctx.epoch < self.ctx.max_epochs

    def save(self) -> None:
        self._committed = self._capture()
        self._rng = self.ctx.adapter.rng_state()

    def restore(self) -> None:
        """Return to the last commit (after a failure, before the world is rebuilt)."""
        if self._committed is None:
            raise RuntimeError("elastic training lost a worker before its first commit; nothing to restore")
        self._load(self._committed)
        self.ctx.adapter.set_rng_state(self._rng)

    def sync(self) -> None:
        """Collective: every rank (new ones included) takes rank 0's state, which becomes the commit."""
        ctx = self.ctx
        check_ranks_agree(ctx.backend, self.specs(), "model", match_names=True)
        committed = ctx.backend.broadcast_object(self._capture() if ctx.is_root else None)
        if "error" in committed:
            raise CheckpointError(committed["error"])
        self._load(committed)
        self._committed = committed
        self._rng = ctx.adapter.rng_state()

    def adopt_world(self) -> None:
        """Before training goes on in a rebuilt world: when Horovod skipped the sync (hosts were only
        removed, just after a commit), load that commit for the new world as a sync would."""
        if self._committed is not None and self._state_world not in (None, self.ctx.size):
            self._load(self._committed)

    def _capture(self) -> dict[str, Any]:
        ctx = self.ctx
        if ctx.startup_error:
            return {"error": ctx.startup_error}
        return {"model_optimizer": ctx.adapter.serialize(ctx.adapter.state_dict(ctx.model, ctx.optimizer)),
                "progress": ctx.progress.resume_point(), "history": list(ctx.history),
                "callbacks": ctx.callbacks.state_dict() if ctx.callbacks else {}, "stop": ctx.stop_state(),
                "world_size": self._state_world or ctx.size}

    def _load(self, committed: dict[str, Any]) -> None:
        ctx = self.ctx
        ctx.adapter.load_state_dict(ctx.model, ctx.optimizer, ctx.adapter.deserialize(committed["model_optimizer"]))
        ctx.progress.load(committed["progress"])
        ctx.history = list(committed["history"])
        ctx.load_stop_state(committed["stop"])
        if ctx.callbacks is not None:
            ctx.callbacks.load_state_dict(committed["callbacks"])
        old_size = committed["world_size"]
        self.after_load(old_size)
        self._state_world = ctx.size
        if old_size != ctx.size:
            rescale_for_world_size(ctx, old_size)
            if ctx.is_root:
                log.warning("the job now has %d workers (was %d): continuing at epoch %d, step %d, the last commit",
                            ctx.size, old_size, ctx.epoch, ctx.global_step)
            if ctx.callbacks is not None:
                ctx.callbacks.on_world_change(ctx, old_size, ctx.size)


def rescale_for_world_size(ctx: TrainContext, old_size: int) -> None:
    """Keep the linear LR scaling rule after the model replicas changed from ``old_size`` to ``ctx.data_size``.

    Every rank rescales its optimizer's LRs and the callbacks that hold base LRs
    (``rescale_for_world_size(old, new)``), so the ranks stay equal. Nothing changes without
    ``ctx.scale_lr``.
    """
    if not ctx.scale_lr:
        return
    ctx.adapter.rescale_learning_rates(ctx.optimizer, ctx.data_size / old_size)
    for callback in ctx.callbacks or ():
        rescale = getattr(callback, "rescale_for_world_size", None)
        if rescale:
            rescale(old_size, ctx.data_size)
