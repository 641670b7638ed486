"""hvdtrain: data-parallel training on Horovod for PyTorch and Keras 3.

Layers import one way (docs/architecture.md): ``hvdtrain.core`` (no framework,
no YAML, no Horovod) <- ``hvdtrain.callbacks`` <- ``hvdtrain.engine`` <- the
adapters ``hvdtrain.torch`` and ``hvdtrain.tensorflow`` <- ``hvdtrain.launcher``,
``hvdtrain.script`` and the CLI. This package root re-exports the core and the callbacks.
"""
from hvdtrain._version import __version__
from hvdtrain.callbacks import (
    Callback,
    CallbackList,
    CSVLogger,
    EarlyStopping,
    LearningRateSchedule,
    LearningRateWarmup,
    MetricAverage,
    MLflowLogger,
    ModelCheckpoint,
    ProgressBar,
    ResumeFromCheckpoint,
    StopOnNonFinite,
    TensorBoardLogger,
)
from hvdtrain.core.agreement import StateMismatchError
from hvdtrain.core.backend import Backend, SerialBackend
from hvdtrain.core.checkpoint import CheckpointError, CheckpointManager
from hvdtrain.core.context import TrainContext
from hvdtrain.core.distributed import rank_zero_only
from hvdtrain.core.options import OptionsError, TrainingOptions
from hvdtrain.core.progress import Progress, StepOutcome

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
    "MLflowLogger",
    "MetricAverage",
    "ModelCheckpoint",
    "OptionsError",
    "Progress",
    "ProgressBar",
    "ResumeFromCheckpoint",
    "SerialBackend",
    "StateMismatchError",
    "StepOutcome",
    "StopOnNonFinite",
    "TensorBoardLogger",
    "TrainContext",
    "TrainingOptions",
    "rank_zero_only",
    "__version__",
]
