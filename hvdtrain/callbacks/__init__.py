"""The callback system shared by the PyTorch and TensorFlow adapters."""
from hvdtrain.callbacks.base import Callback, CallbackList, Order
from hvdtrain.callbacks.broadcast import BroadcastInitialState
from hvdtrain.callbacks.checkpoint import ModelCheckpoint, ResumeFromCheckpoint
from hvdtrain.callbacks.defaults import default_callbacks
from hvdtrain.callbacks.early_stopping import EarlyStopping, StopOnNonFinite
from hvdtrain.callbacks.loggers import CSVLogger, TensorBoardLogger
from hvdtrain.callbacks.lr import LearningRateSchedule, LearningRateWarmup, cosine_decay, step_decay
from hvdtrain.callbacks.metrics import MetricAverage
from hvdtrain.callbacks.mlflow_logger import MLflowLogger
from hvdtrain.callbacks.progress import ProgressBar

__all__ = [
    "BroadcastInitialState", "CSVLogger", "Callback", "CallbackList", "EarlyStopping",
    "LearningRateSchedule", "LearningRateWarmup", "MLflowLogger", "MetricAverage", "ModelCheckpoint", "Order",
    "ProgressBar", "ResumeFromCheckpoint", "StopOnNonFinite", "TensorBoardLogger",
    "cosine_decay", "default_callbacks", "step_decay",
]
