"""{{project_name}}: data-parallel PyTorch training with hvdtrain.

    hvdtrain run -np 2 train.py            # or: horovodrun -np 2 python train.py
    hvdtrain run -np 2 train.py --resume   # continue from the newest checkpoint
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch import nn

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


def load_data(seed: int):
    """Replace with your data: return (train, val) pairs of tensors (every worker passes all of it)."""
    return (tuple(torch.from_numpy(a) for a in split) for split in digits(seed))


def build_model() -> nn.Module:
    """Replace with your model."""
    return nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))


def main() -> None:
    args = parse_args()
    # Checked before Horovod starts: a bad key fails at once, with the valid keys.
    try:
        options = load_options(args.config, epochs=args.epochs, output_dir=args.output_dir, resume=args.resume or None)
    except OptionsError as err:
        raise SystemExit(f"error: {err}") from None
    backend = ht.init()
    torch.manual_seed(options.seed)
    train, val = load_data(options.seed)
    model = build_model()
    trainer = ht.Trainer(model, torch.optim.SGD(model.parameters(), lr=options.lr, momentum=0.9),
                         nn.functional.cross_entropy, train_data=train, val_data=val,
                         metrics={"accuracy": ht.accuracy}, options=options)
    history = trainer.fit()
    if backend.rank == 0 and history:
        print(f"final val_accuracy={history[-1]['val_accuracy']:.4f}", flush=True)


if __name__ == "__main__":
    main()
