"""A small CNN on scikit-learn's digits as 1x8x8 images: a DataLoader with workers and augmentation,
a OneCycleLR schedule and a custom training step, under hvdtrain's PyTorch Trainer.

    hvdtrain run -np 2 examples/pytorch_cnn_images.py
    hvdtrain run -np 2 examples/pytorch_cnn_images.py --mlflow sqlite:///mlflow.db
"""
from __future__ import annotations

import math
import sys

from hvdtrain.script import parse_training_args, training_parser


def main(argv: list[str] | None = None) -> int:
    parser = training_parser(__doc__, output_dir="runs/pytorch_cnn_images", epochs=15, lr=0.05, batch_size=32,
                             monitor="val_accuracy")
    parser.add_argument("--loader-workers", type=int, default=1, help="DataLoader worker processes per rank")
    args = parse_training_args(parser, argv)
    import torch
    from torch import nn
    from torch.utils.data import DataLoader, Dataset

    import hvdtrain.torch as ht
    from hvdtrain.datasets import digits

    class Images(Dataset):
        """Digits as 1x8x8 images; with ``augment``, each is shifted by up to one pixel."""

        def __init__(self, x, y, augment: bool) -> None:
            self.x, self.y, self.augment = torch.from_numpy(x).reshape(-1, 1, 8, 8), torch.from_numpy(y), augment

        def __len__(self) -> int:
            return len(self.y)

        def __getitem__(self, i: int):
            image = self.x[i]
            if self.augment:
                dy, dx = torch.randint(-1, 2, (2,)).tolist()
                image = torch.roll(image, shifts=(dy, dx), dims=(1, 2))
            return image, self.y[i]

    backend = ht.init()
    torch.manual_seed(args.seed)
    (x_train, y_train), (x_val, y_val) = digits(args.seed)
    o = args.options
    loader = DataLoader(Images(x_train, y_train, augment=True), batch_size=o.batch_size, shuffle=True,
                        num_workers=args.loader_workers, persistent_workers=args.loader_workers > 0)
    model = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
                          nn.MaxPool2d(2), nn.Flatten(), nn.Dropout(0.2), nn.Linear(32 * 4 * 4, 10))
    optimizer = torch.optim.SGD(model.parameters(), lr=o.lr, momentum=0.9)
    steps = o.epochs * math.ceil(len(x_train) / (o.batch_size * backend.size) / o.backward_passes_per_step)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=o.lr, total_steps=steps)

    def training_step(batch):
        images, labels = batch
        outputs = model(images)
        loss = nn.functional.cross_entropy(outputs, labels, label_smoothing=0.05)
        return {"loss": loss, "accuracy": ht.accuracy(outputs.detach(), labels)}

    trainer = ht.Trainer(model, optimizer, nn.functional.cross_entropy, train_data=loader,
                         val_data=Images(x_val, y_val, augment=False), training_step=training_step,
                         lr_scheduler=schedule, metrics={"accuracy": ht.accuracy}, options=o)
    history = trainer.fit()
    if backend.rank == 0 and history:
        print(f"final val_accuracy={history[-1]['val_accuracy']:.4f} after {len(history)} epochs "
              f"on {backend.size} worker{'s' * (backend.size != 1)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
