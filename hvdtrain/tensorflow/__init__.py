"""TensorFlow / Keras 3 adapter: backends (Horovod, serial), distributed optimizer, state I/O, sharding,
``fit`` and a Trainer.

Built on Horovod's core TensorFlow ops only (``grouped_allreduce``,
``broadcast_variables``, object collectives): Horovod's Keras integration
predates Keras 3.
"""
from hvdtrain.core.options import TrainingOptions
from hvdtrain.tensorflow.adapter import TensorFlowAdapter, broadcast_state
from hvdtrain.tensorflow.backend import HorovodBackend, SerialBackend, init
from hvdtrain.tensorflow.data import ShardedArrays, shard_dataset
from hvdtrain.tensorflow.keras_fit import KerasBridge, fit
from hvdtrain.tensorflow.optimizer import DistributedOptimizer, GradientReducer, is_distributed
from hvdtrain.tensorflow.precision import set_precision
from hvdtrain.tensorflow.schedule import ScaledSchedule
from hvdtrain.tensorflow.step import make_train_step
from hvdtrain.tensorflow.trainer import Trainer, accuracy

__all__ = [
    "DistributedOptimizer", "GradientReducer", "HorovodBackend", "KerasBridge", "ScaledSchedule", "SerialBackend",
    "ShardedArrays", "TensorFlowAdapter", "Trainer", "TrainingOptions", "accuracy", "broadcast_state", "fit",
    "init", "is_distributed", "make_train_step", "set_precision", "shard_dataset",
]
