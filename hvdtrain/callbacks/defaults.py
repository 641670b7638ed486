"""The callbacks every Trainer (PyTorch, TensorFlow) and ``hvdtrain.tensorflow.fit`` start from."""
from __future__ import annotations

import os

from hvdtrain.callbacks.base import Callback
from hvdtrain.callbacks.broadcast import BroadcastInitialState
from hvdtrain.callbacks.checkpoint import ModelCheckpoint, ResumeFromCheckpoint
from hvdtrain.callbacks.early_stopping import EarlyStopping, StopOnNonFinite
from hvdtrain.callbacks.loggers import CSVLogger, TensorBoardLogger
from hvdtrain.callbacks.lr import LearningRateSchedule
from hvdtrain.callbacks.metrics import MetricAverage
from hvdtrain.callbacks.mlflow_logger import MLflowLogger
from hvdtrain.callbacks.progress import ProgressBar
from hvdtrain.core.options import TrainingOptions


def default_callbacks(options: TrainingOptions, *, has_val: bool = True,
                      weighted_metrics: bool = True) -> list[Callback]:
    """Broadcast, metric averaging, NaN guard, and whatever the options ask for.

    Rank-0-only callbacks (progress, logs, checkpoint writing) are added on
    every rank: they decide for themselves what runs where.

    Args:
        options: ``warmup_epochs``/``lr_schedule`` add a ``LearningRateSchedule``; ``checkpoint_dir`` a
            ``ModelCheckpoint``; ``resume`` a ``ResumeFromCheckpoint``; ``early_stopping_patience`` an
            ``EarlyStopping``; ``log_dir`` a ``CSVLogger`` and a ``TensorBoardLogger``; ``mlflow_uri`` an
            ``MLflowLogger``; ``progress`` a
            ``ProgressBar``. ``monitor`` drives best-k checkpoints and early stopping; a ``val_`` metric
            falls back to its training twin when there is no validation data.
        has_val: whether validation metrics will be logged.
        weighted_metrics: weight the metric average by each rank's sample count.
    """
    o = options
    monitor = o.monitor[len("val_"):] if not has_val and o.monitor.startswith("val_") else o.monitor
    callbacks: list[Callback] = [BroadcastInitialState(), MetricAverage(weighted=weighted_metrics),
                                 StopOnNonFinite()]
    if o.resume:
        callbacks.append(ResumeFromCheckpoint(o.checkpoint_dir if o.resume is True else o.resume))
    if o.warmup_epochs or o.lr_schedule:
        callbacks.append(LearningRateSchedule(o.lr_schedule, o.warmup_epochs))
    if o.checkpoint_dir is not None:
        callbacks.append(ModelCheckpoint(o.checkpoint_dir, monitor=monitor, keep_last=o.keep_last,
                                         keep_best=o.keep_best, every_n_steps=o.checkpoint_every_n_steps))
    if o.early_stopping_patience is not None:
        callbacks.append(EarlyStopping(monitor, patience=o.early_stopping_patience))
    if o.mlflow_uri is not None:
        callbacks.append(MLflowLogger(o.mlflow_uri, params=o))
    if o.log_dir is not None:
        callbacks += [CSVLogger(os.path.join(o.log_dir, "metrics.csv")), TensorBoardLogger(o.log_dir)]
    if o.progress:
        callbacks.append(ProgressBar())
    return callbacks
