"""PyTorch adapter: backends (Horovod, serial), distributed optimizer, state I/O, sharding and a Trainer."""
from hvdtrain.core.options import TrainingOptions
from hvdtrain.torch.adapter import TorchAdapter, broadcast_state
from hvdtrain.torch.backend import HorovodBackend, SerialBackend, init
from hvdtrain.torch.data import DistributedBatchSampler, TensorBatches
from hvdtrain.torch.named_optimizers import NamedOptimizers
from hvdtrain.torch.optimizer import DistributedOptimizer, clip_grad_norm, is_distributed, skip_synchronize
from hvdtrain.torch.pipeline import split_sequential
from hvdtrain.torch.trainer import Trainer, accuracy
from hvdtrain.torch.updates import ManualOptimization

__all__ = [
    "DistributedBatchSampler", "DistributedOptimizer", "HorovodBackend", "ManualOptimization", "NamedOptimizers",
    "SerialBackend", "TensorBatches", "TorchAdapter", "Trainer", "TrainingOptions", "accuracy", "broadcast_state",
    "clip_grad_norm", "init", "is_distributed", "skip_synchronize", "split_sequential",
]
