"""The command-line flags every hvdtrain training script shares, checked before any framework is imported."""
from __future__ import annotations

import argparse
from pathlib import Path


def training_parser(description: str, *, epochs: int, output_dir: str, mid_epoch_checkpoints: bool = True
                    ) -> argparse.ArgumentParser:
    """A parser with ``--epochs``, ``--batch-size``, ``--lr``, ``--warmup-epochs``, ``--output-dir``,
    ``--checkpoint-dir``, ``--resume``, ``--patience``, ``--seed``, ``--no-progress`` and, if ``mid_epoch_checkpoints``,
    ``--checkpoint-every-n-steps``. Add your own flags, then call ``parse_training_args``."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--epochs", type=int, default=epochs, help=f"epochs to train (default: {epochs})")
    add("--batch-size", type=int, default=32, help="samples per step per worker (default: 32)")
    add("--lr", type=float, default=0.05, help="single-worker learning rate, scaled by the workers (default: 0.05)")
    add("--warmup-epochs", type=float, default=2.0, help="LR warmup epochs (default: 2)")
    add("--output-dir", type=Path, default=Path(output_dir),
        help=f"metrics.csv, TensorBoard events and, by default, checkpoints/ (default: {output_dir})")
    add("--checkpoint-dir", type=Path, default=None,
        help="where checkpoints are written and resumed from (default: OUTPUT_DIR/checkpoints)")
    if mid_epoch_checkpoints:
        add("--checkpoint-every-n-steps", type=int, default=None, help="also checkpoint mid-epoch every n steps")
    add("--resume", action="store_true", help="resume from the newest good checkpoint in the checkpoint directory")
    add("--patience", type=int, default=None, help="early-stopping patience in epochs")
    add("--seed", type=int, default=0, help="seed of weights, split and data order (default: 0)")
    add("--no-progress", action="store_true", help="hide the progress bar")
    return parser


def parse_training_args(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> argparse.Namespace:
    """Parse and check; a bad value exits with status 2 and a message naming the flag."""
    args = parser.parse_args(argv)
    if args.epochs < 1 or args.batch_size < 1 or args.lr <= 0:
        parser.error("--epochs and --batch-size must be >= 1 and --lr > 0")
    if args.warmup_epochs < 0:
        parser.error("--warmup-epochs must be >= 0")
    for flag in ("patience", "checkpoint_every_n_steps"):
        value = getattr(args, flag, None)
        if value is not None and value < 1:
            parser.error(f"--{flag.replace('_', '-')} must be >= 1")
    if args.checkpoint_dir is None:
        args.checkpoint_dir = args.output_dir / "checkpoints"
    return args
