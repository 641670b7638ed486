"""{{project_name}}: data-parallel PyTorch training with hvdtrain.

    hvdtrain run -np 2 train.py            # or: horovodrun -np 2 python train.py
    hvdtrain run -np 2 train.py --resume   # continue from the newest checkpoint
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import hvdtrain.torch as ht
from hvdtrain.datasets import digits
from hvdtrain.script import OptionsError, load_options

HERE = Path(__file__).resolve().parent


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=HERE / "config.yaml", help="hyper-parameter file")
    parser.add_argument("--resume", action="store_true", help="resume from the newest checkpoint")
    parser.add_argument("--epochs", type=int, help="overrides epochs of the config")
    parser.add_argument("--output-dir", help="overrides output_dir of the config")
    return parser.parse_args()


def load_data(seed: int, batch_size: int) -> tuple[DataLoader, DataLoader]:
    """Replace with your data: (train, val) DataLoaders over the whole data set.

    Every worker builds the same loaders; the Trainer swaps in its distributed sampler, so each
    worker reads its own shard (with this loader's workers, collate_fn and other settings).
    The loader processes are forked once and kept (persistent_workers): a fork per epoch costs time,
    and every fork of a process that runs MPI and Horovod's threads risks a child that inherits a held lock.
    """
    (x_train, y_train), (x_val, y_val) = digits(seed)
    train = TensorDataset(torch.from_numpy(x_train), torch.from_numpy(y_train))
    val = TensorDataset(torch.from_numpy(x_val), torch.from_numpy(y_val))
    workers = 1  # loader processes per training process (0: read in the training process)
    return (DataLoader(train, batch_size=batch_size, shuffle=True, num_workers=workers,
                       persistent_workers=workers > 0),
            DataLoader(val, batch_size=batch_size, num_workers=workers, persistent_workers=workers > 0))


def build_model() -> nn.Module:
    """Replace with your model."""
    return nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))


def main() -> None:
    args = parse_args()
    # Checked before Horovod starts: a bad key fails at once, with the valid keys.
    try:
        options = load_options(args.config, epochs=args.epochs, output_dir=args.output_dir,
                               resume=args.resume or None)
    except OptionsError as err:
        raise SystemExit(f"error: {err}") from None
    backend = ht.init()
    torch.manual_seed(options.seed)
    train, val = load_data(options.seed, options.batch_size)
    model = build_model()
    trainer = ht.Trainer(model, torch.optim.SGD(model.parameters(), lr=options.lr, momentum=0.9),
                         nn.functional.cross_entropy, train_data=train, val_data=val,
                         metrics={"accuracy": ht.accuracy}, options=options)
    history = trainer.fit()
    if backend.rank == 0 and history:
        print(f"final val_accuracy={history[-1]['val_accuracy']:.4f}", flush=True)


if __name__ == "__main__":
    main()
