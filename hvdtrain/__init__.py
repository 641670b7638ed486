"""hvdtrain: data-parallel training on Horovod for PyTorch and Keras 3.

The core (this package, ``hvdtrain.core`` and ``hvdtrain.callbacks``) never
imports torch or TensorFlow; the framework adapters live in ``hvdtrain.torch``
and ``hvdtrain.tensorflow``.
"""
from hvdtrain.callbacks import (
    Callback,
    CallbackList,
    CSVLogger,
    EarlyStopping,
    LearningRateSchedule,
    LearningRateWarmup,
    MetricAverage,
    ModelCheckpoint,
    ProgressBar,
    ResumeFromCheckpoint,
    StopOnNonFinite,
    TensorBoardLogger,
)
from hvdtrain.core.backend import Backend, SerialBackend
from hvdtrain.core.checkpoint import CheckpointError, CheckpointManager
from hvdtrain.core.context import TrainContext
from hvdtrain.core.distributed import rank_zero_only

__version__ = "0.1.0"

__all__ = [
    "Backend",
    "CSVLogger",
    "Callback",
    "CallbackList",
    "CheckpointError",
    "CheckpointManager",
    "EarlyStopping",
    "LearningRateSchedule",
    "LearningRateWarmup",
    "MetricAverage",
    "ModelCheckpoint",
    "ProgressBar",
    "ResumeFromCheckpoint",
    "SerialBackend",
    "StopOnNonFinite",
    "TensorBoardLogger",
    "TrainContext",
    "rank_zero_only",
    "__version__",
]
