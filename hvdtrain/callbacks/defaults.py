"""The callbacks every Trainer (PyTorch, TensorFlow) and ``hvdtrain.tensorflow.fit`` start from."""
from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from hvdtrain.callbacks.base import Callback
from hvdtrain.callbacks.broadcast import BroadcastInitialState
from hvdtrain.callbacks.checkpoint import ModelCheckpoint, ResumeFromCheckpoint
from hvdtrain.callbacks.early_stopping import EarlyStopping, StopOnNonFinite
from hvdtrain.callbacks.loggers import CSVLogger, TensorBoardLogger
from hvdtrain.callbacks.lr import LearningRateSchedule
from hvdtrain.callbacks.metrics import MetricAverage
from hvdtrain.callbacks.progress import ProgressBar


def check_resume_target(resume: Any, checkpoint_dir: Any) -> None:
    """``resume=True`` reads ``checkpoint_dir``, so it needs one."""
    if resume is True and checkpoint_dir is None:
        raise ValueError("resume=True needs checkpoint_dir=; or pass the checkpoint path as resume=")


def default_callbacks(*, warmup_epochs: float = 0.0, lr_schedule: Callable[[float], float] | None = None,
                      checkpoint_dir: Any = None, every_n_steps: int | None = None, keep_last: int = 2,
                      keep_best: int = 1, monitor: str = "val_loss", resume: Any = False,
                      patience: int | None = None, log_dir: Any = None, progress: bool = True,
                      has_val: bool = True, weighted_metrics: bool = True) -> list[Callback]:
    """Broadcast, metric averaging, NaN guard, and whatever the arguments ask for.

    Rank-0-only callbacks (progress, logs, checkpoint writing) are added on
    every rank: they decide for themselves what runs where.

    Args:
        warmup_epochs, lr_schedule: add a ``LearningRateSchedule``.
        checkpoint_dir, every_n_steps, keep_last, keep_best: add a ``ModelCheckpoint``.
        monitor: metric for best-k checkpoints and early stopping; a ``val_``
            metric falls back to its training twin when there is no validation data.
        resume: True resumes from ``checkpoint_dir``; a path resumes from there.
        patience: add ``EarlyStopping``.
        log_dir: add a ``CSVLogger`` (``metrics.csv``) and a ``TensorBoardLogger``.
        progress: add a ``ProgressBar``.
        has_val: whether validation metrics will be logged.
        weighted_metrics: weight the metric average by each rank's sample count.
    """
    if not has_val and monitor.startswith("val_"):
        monitor = monitor[len("val_"):]
    callbacks: list[Callback] = [BroadcastInitialState(), MetricAverage(weighted=weighted_metrics),
                                 StopOnNonFinite()]
    if resume:
        callbacks.append(ResumeFromCheckpoint(checkpoint_dir if resume is True else resume))
    if warmup_epochs or lr_schedule:
        callbacks.append(LearningRateSchedule(lr_schedule, warmup_epochs))
    if checkpoint_dir is not None:
        callbacks.append(ModelCheckpoint(checkpoint_dir, monitor=monitor, keep_last=keep_last,
                                         keep_best=keep_best, every_n_steps=every_n_steps))
    if patience is not None:
        callbacks.append(EarlyStopping(monitor, patience=patience))
    if log_dir is not None:
        callbacks += [CSVLogger(os.path.join(log_dir, "metrics.csv")), TensorBoardLogger(log_dir)]
    if progress:
        callbacks.append(ProgressBar())
    return callbacks
