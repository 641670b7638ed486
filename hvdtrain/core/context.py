"""TrainContext: the one state object every callback hook receives."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from hvdtrain.core.adapter import FrameworkAdapter
from hvdtrain.core.backend import Backend, SerialBackend, any_rank
from hvdtrain.core.layout import Layout
from hvdtrain.core.progress import Progress, StepOutcome

log = logging.getLogger("hvdtrain")


@dataclass
class TrainContext:
    """Mutable training state shared by the loop and the callbacks.

    Attributes:
        backend: collectives of the job (``SerialBackend`` for one process).
        adapter: the framework adapter.
        model: the framework model.
        optimizer: the (distributed) optimizer; with several, one object over all of them (the
            PyTorch Trainer's ``NamedOptimizers``: ``param_groups`` and ``state_dict`` cover them all).
        max_epochs: number of epochs to train.
        progress: epoch, batch, optimizer steps and samples seen; the loop advances it.
        steps_per_epoch: batches per epoch on every rank, if known.
        logs: metrics of the current batch or epoch; callbacks may add to it.
        outcome: what the last training batch did (loss, update, non-finite agreement).
        stop_training: true once the ranks agreed to stop (see ``agree_on_stop``).
        stop_reason: human-readable reason for stopping.
        resumed_from: the checkpoint path training resumed from, if any.
        scale_lr: the LRs follow the world size (the linear scaling rule), so a resume or an elastic
            change to another number of workers rescales them.
        startup_error: a failure rank 0 met before the ranks first agree (an elastic start loads the
            checkpoint on rank 0 alone); the elastic sync raises it on every rank.
        sample_count: samples this rank processed in the current epoch.
        callbacks: the running ``CallbackList``.
        history: one dict of epoch logs per finished epoch.
        extras: anything user callbacks want to share.
    """

    backend: Backend = field(default_factory=SerialBackend)
    adapter: FrameworkAdapter | None = None
    model: Any = None
    optimizer: Any = None
    max_epochs: int = 1
    progress: Progress = field(default_factory=Progress)
    steps_per_epoch: int | None = None
    logs: dict[str, float] = field(default_factory=dict)
    outcome: StepOutcome = field(default_factory=StepOutcome)
    stop_training: bool = False
    stop_reason: str | None = None
    resumed_from: str | None = None
    scale_lr: bool = True
    startup_error: str | None = None
    sample_count: int = 0
    callbacks: Any = None
    history: list[dict[str, float]] = field(default_factory=list)
    extras: dict[str, Any] = field(default_factory=dict)
    _stop_wish: bool = field(default=False, repr=False)

    @property
    def epoch(self) -> int:
        """The current epoch, 0-based."""
        return self.progress.epoch

    @property
    def global_step(self) -> int:
        """Optimizer steps since the start of training."""
        return self.progress.step

    @property
    def batch_index(self) -> int:
        """The batch of the epoch being run, 0-based."""
        return self.progress.batch

    @property
    def samples_seen_in_epoch(self) -> int:
        """Samples all ranks together finished in this epoch."""
        return self.progress.samples_in_epoch

    @property
    def rank(self) -> int:
        return self.backend.rank

    @property
    def size(self) -> int:
        return self.backend.size

    @property
    def layout(self) -> Layout:
        """Pipeline stages x data replicas: ``size`` is the world, ``data_size`` the model replicas."""
        return self.backend.layout

    @property
    def data_rank(self) -> int:
        """This rank's model replica: which shard of the data it trains on."""
        return self.backend.layout.data_rank

    @property
    def data_size(self) -> int:
        """The model replicas: the data's shards, and what gradients and learning rates are scaled by."""
        return self.backend.layout.data_size

    @property
    def is_root(self) -> bool:
        return self.backend.rank == 0

    @property
    def elastic(self) -> bool:
        """Launched elastic (``hvdtrain run --elastic``): rank 0's state spreads at each sync, not at start."""
        return bool(getattr(self.backend, "elastic", False))

    def count_batch(self, local_samples: int, global_samples: int, updated: bool) -> None:
        """A training batch finished: this rank's ``local_samples`` of the ``global_samples`` of all ranks;
        ``updated``: it ended an optimizer step. The one rule both loop drivers count by."""
        self.sample_count += local_samples
        self.progress.finish_batch(global_samples, updated)

    def request_stop(self, reason: str) -> None:
        """Ask to stop. The loop acts on it at the next agreement (the epoch's end)."""
        self._stop_wish = True
        self.stop_reason = self.stop_reason or reason

    def stop_agreed(self, reason: str) -> None:
        """Stop now: for a decision every rank has already reached identically."""
        self._stopped(self.stop_reason or reason)

    def stop_state(self) -> dict[str, Any]:
        """The stop requested but not yet agreed, for an elastic commit (a commit never follows an agreed stop)."""
        return {"wish": self._stop_wish, "reason": self.stop_reason}

    def load_stop_state(self, state: dict[str, Any]) -> None:
        """Roll the stop back to a commit's: a stop agreed after it (say, in a collective that a lost worker
        broke) is forgotten, and the ranks decide again as they replay the steps."""
        self.stop_training = False
        self._stop_wish, self.stop_reason = state["wish"], state["reason"]

    def agree_on_stop(self) -> bool:
        """Collective: stop every rank if any rank requested it; returns the decision.

        Every rank must call this at the same point. The loop does so at every
        epoch end; a callback that must stop mid-epoch calls it itself.
        """
        wish = self._stop_wish
        if any_rank(self.backend, wish):
            reasons = self.backend.allgather_object(self.stop_reason if wish else None)
            self._stopped(next(r for r in reasons if r))
        return self.stop_training

    def _stopped(self, reason: str) -> None:
        if self.is_root and not self.stop_training:
            log.warning("training stops at epoch %d of %d, step %d: %s", self.epoch + 1, self.max_epochs,
                        self.global_step, reason)
        self.stop_training, self.stop_reason = True, reason
