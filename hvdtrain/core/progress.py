"""Where training is: the counters exact resume needs, advanced in one place, and one step's outcome."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

_FORMER_NAMES = {"global_step": "step", "batch_index": "batch", "samples_seen_in_epoch": "samples_in_epoch",
                 "micro_batches": "batches_run"}


@dataclass
class Progress:
    """Training progress, owned and advanced by the loop; checkpoints save its ``resume_point``.

    Attributes:
        epoch: the current epoch, 0-based.
        batch: the batch of the epoch being run, 0-based; between epochs, 0.
        step: optimizer steps (gradient updates) since the start of training: ``global_step``.
        batches_run: batches (each a forward/backward pass; several per step with accumulation) since the
            start of training. A pipeline's micro-batches are parts of one batch and not counted here.
        samples_in_epoch: samples all ranks together finished in this epoch.
    """

    epoch: int = 0
    batch: int = 0
    step: int = 0
    batches_run: int = 0
    samples_in_epoch: int = 0
    _batch_done: bool = False

    @property
    def batches_done(self) -> int:
        """Batches of this epoch already finished: where the epoch's data resumes."""
        return self.batch + self._batch_done

    def start_batch(self) -> None:
        """Move past the batch that just finished, if any."""
        self.batch += self._batch_done
        self._batch_done = False

    def finish_batch(self, global_samples: int, updated: bool) -> None:
        """Count a finished batch of ``global_samples`` (all ranks); ``updated``: it ended an optimizer step."""
        self.batches_run += 1
        self.step += bool(updated)
        self.samples_in_epoch += global_samples
        self._batch_done = True

    def next_epoch(self) -> None:
        """The epoch ended: the next one starts at its first batch."""
        self.epoch += 1
        self.batch = self.samples_in_epoch = 0
        self._batch_done = False

    def start_epoch(self, epoch: int) -> None:
        """Start ``epoch`` from its first batch (for loops that number epochs themselves, like ``model.fit``)."""
        self.epoch, self.batch, self.samples_in_epoch, self._batch_done = epoch, 0, 0, False

    def resume_point(self) -> dict[str, int]:
        """Where a run restarted from a checkpoint written now continues: after the last finished batch."""
        return {"epoch": self.epoch, "batch": self.batches_done, "step": self.step,
                "batches_run": self.batches_run, "samples_in_epoch": self.samples_in_epoch}

    def next_epoch_point(self) -> dict[str, int]:
        """The resume point of the next epoch's start (a checkpoint written at an epoch's end)."""
        return {**self.resume_point(), "epoch": self.epoch + 1, "batch": 0, "samples_in_epoch": 0}

    def load(self, point: dict[str, Any]) -> None:
        """Continue from a ``resume_point`` (or the counters of a checkpoint written by hvdtrain 0.1.0)."""
        point = {_FORMER_NAMES.get(k, k): v for k, v in point.items()}
        point.setdefault("batches_run", point["step"])
        fields = {k: int(point[k]) for k in ("epoch", "batch", "step", "batches_run", "samples_in_epoch")}
        for name, value in fields.items():
            setattr(self, name, value)
        self._batch_done = False


@dataclass(frozen=True)
class StepOutcome:
    """What one training batch did, as the loop reports it to ``on_batch_end``.

    Attributes:
        loss: this rank's batch loss (a framework scalar; reading it may synchronize a device).
        updated: the batch ended an optimizer step: gradients were reduced across ranks.
        nonfinite_checked: the ranks already agreed on non-finite losses for this step (inside the
            gradient allreduce), so ``nonfinite_rank`` is the same on every rank.
        nonfinite_rank: the highest rank whose loss was not finite (the update was skipped), or None.
    """

    loss: Any = None
    updated: bool = True
    nonfinite_checked: bool = False
    nonfinite_rank: int | None = None
