"""PyTorch adapter: Horovod-backed optimizer, state I/O, sharding and a Trainer."""
from hvdtrain.torch.adapter import TorchAdapter
from hvdtrain.torch.backend import HorovodBackend, init
from hvdtrain.torch.data import DistributedBatchSampler, TensorBatches
from hvdtrain.torch.optimizer import DistributedOptimizer, clip_grad_norm
from hvdtrain.torch.trainer import Trainer, accuracy

__all__ = [
    "DistributedBatchSampler", "DistributedOptimizer", "HorovodBackend", "TensorBatches",
    "TorchAdapter", "Trainer", "accuracy", "clip_grad_norm", "init",
]
