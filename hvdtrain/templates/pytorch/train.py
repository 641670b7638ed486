"""{{project_name}}: data-parallel PyTorch training with hvdtrain.

    hvdtrain run -np 2 train.py            # or: horovodrun -np 2 python train.py
    hvdtrain run -np 2 train.py --resume   # continue from the newest checkpoint
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
import yaml
from sklearn.datasets import load_digits
from torch import nn

import hvdtrain.torch as ht
from hvdtrain.torch.trainer import accuracy

HERE = Path(__file__).resolve().parent


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=HERE / "config.yaml", help="hyper-parameter file")
    parser.add_argument("--resume", action="store_true", help="resume from the newest checkpoint")
    parser.add_argument("--output-dir", type=Path, help="overrides output_dir of the config")
    return parser.parse_args()


def load_config(path: Path) -> dict:
    config = yaml.safe_load(path.read_text()) or {}
    known = {"epochs", "batch_size", "lr", "warmup_epochs", "seed", "output_dir", "checkpoint_every_n_steps",
             "early_stopping_patience"}
    unknown = set(config) - known
    if unknown:
        raise SystemExit(f"{path}: unknown keys {sorted(unknown)}; valid keys are {sorted(known)}")
    return config


def load_data(seed: int):
    """Replace with your data: return (train, val) tuples of tensors."""
    digits = load_digits()
    x = digits.data.astype(np.float32) / 16.0
    y = digits.target.astype(np.int64)
    order = np.random.RandomState(seed).permutation(len(x))
    cut = int(0.8 * len(x))
    train, val = order[:cut], order[cut:]
    return (torch.from_numpy(x[train]), torch.from_numpy(y[train])), (torch.from_numpy(x[val]),
                                                                        torch.from_numpy(y[val]))


def build_model() -> nn.Module:
    """Replace with your model."""
    return nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))


def main() -> None:
    args = parse_args()
    config = load_config(args.config)
    output_dir = args.output_dir or HERE / config.get("output_dir", "runs")
    backend = ht.init()
    torch.manual_seed(config.get("seed", 0))
    train, val = load_data(config.get("seed", 0))
    model = build_model()
    trainer = ht.Trainer(
        model, torch.optim.SGD(model.parameters(), lr=config.get("lr", 0.05), momentum=0.9),
        nn.functional.cross_entropy, train_data=train, val_data=val, batch_size=config.get("batch_size", 32),
        max_epochs=config.get("epochs", 20), metrics={"accuracy": accuracy}, seed=config.get("seed", 0),
        warmup_epochs=config.get("warmup_epochs", 0), checkpoint_dir=output_dir / "checkpoints",
        checkpoint_every_n_steps=config.get("checkpoint_every_n_steps"), monitor="val_accuracy",
        resume=args.resume, early_stopping_patience=config.get("early_stopping_patience"), log_dir=output_dir)
    history = trainer.fit()
    if backend.rank == 0 and history:
        print(f"final val_accuracy={history[-1]['val_accuracy']:.4f}", flush=True)


if __name__ == "__main__":
    main()
