"""Model parallelism: one MLP split across 2 ranks, trained as a pipeline on scikit-learn's digits.

Rank 0 holds the first layers, rank 1 the rest and the loss; activations go
forward and gradients back between them, micro-batch by micro-batch.

    mpirun -np 2 python examples/model_parallel_digits.py
"""
from __future__ import annotations

import argparse
import sys

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

from hvdtrain.torch.pipeline import PipelineStage


def build_model(seed: int) -> nn.Sequential:
    """The whole model; each rank keeps only its own slice of it."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 128), nn.ReLU(), nn.Linear(128, 10))


def split(model: nn.Sequential, stage: int, stages: int) -> nn.Sequential:
    """Cut the layers into ``stages`` contiguous, roughly equal slices."""
    bounds = np.linspace(0, len(model), stages + 1).round().astype(int)
    return model[bounds[stage]:bounds[stage + 1]]


def load_data(seed: int):
    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    x_train, x_val, y_train, y_val = train_test_split(x, digits.target, test_size=0.2, random_state=seed,
                                                      stratify=digits.target)
    return [torch.from_numpy(a) for a in (x_train, y_train.astype(np.int64), x_val, y_val.astype(np.int64))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--micro-batches", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    stage_module = split(build_model(args.seed), comm.Get_rank(), comm.Get_size())
    stage = PipelineStage(stage_module, nn.functional.cross_entropy, micro_batches=args.micro_batches, comm=comm)
    optimizer = torch.optim.SGD(stage_module.parameters(), lr=0.1, momentum=0.9)
    x_train, y_train, x_val, y_val = load_data(args.seed)
    for epoch in range(args.epochs):
        order = torch.from_numpy(np.random.RandomState(args.seed + epoch).permutation(len(x_train)))
        losses = [stage.train_step(x_train[idx], y_train[idx], optimizer)
                  for idx in order.split(args.batch_size)]
        outputs = stage.predict(x_val)
        if stage.is_last:
            accuracy = (outputs.argmax(1) == y_val).float().mean().item()
            print(f"epoch {epoch + 1}/{args.epochs}  loss={np.mean(losses):.4f}  val_accuracy={accuracy:.4f}",
                  flush=True)
    if stage.is_last:
        print(f"final val_accuracy={accuracy:.4f} with the model split across {stage.stages} ranks", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
