"""GPU throughput: hvdtrain's Trainer against a hand-written Horovod loop and a plain torch loop.

ResNet-50 (torchvision) on synthetic 224x224 images, on one GPU through Horovod's NCCL path, in
float32, bf16-mixed and 16-mixed. Writes docs/performance-gpu.md. Run with ``make bench-gpu``
(``horovodrun -np 1 python -m benchmarks.gpu``); it fails without CUDA rather than measure a CPU.
"""
from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import statistics
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import horovod.torch as hvd
import torch
from torch import nn

import hvdtrain.torch as ht
from hvdtrain.callbacks import Callback

PRECISIONS = ("32", "bf16-mixed", "16-mixed")
LOOPS = ("hvdtrain", "horovod", "torch")
REPORT = Path(__file__).resolve().parents[1] / "docs" / "performance-gpu.md"


def build_model() -> nn.Module:
    from torchvision.models import resnet50

    return resnet50(num_classes=1000).to(memory_format=torch.channels_last)  # NHWC: what tensor cores want


def synthetic(batch: int, batches: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Random images and labels, already on the GPU: the benchmark measures training, not loading."""
    generator = torch.Generator(device=device).manual_seed(0)
    images = torch.randn(batch * batches, 3, 224, 224, device=device, generator=generator)
    labels = torch.randint(0, 1000, (batch * batches,), device=device, generator=generator)
    return images.contiguous(memory_format=torch.channels_last), labels


class StepClock(Callback):
    """Stamps the end of every Trainer step, with the GPU's queued work finished first."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def on_batch_end(self, ctx: Any) -> None:
        torch.cuda.synchronize()
        self.times.append(time.perf_counter())


def time_trainer(precision: str, args: argparse.Namespace, device: torch.device) -> list[float]:
    model = build_model()
    clock = StepClock()
    trainer = ht.Trainer(model, torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9),
                         nn.functional.cross_entropy, synthetic(args.batch_size, args.steps + args.warmup, device),
                         callbacks=[clock], batch_size=args.batch_size, precision=precision, progress=False,
                         device=device, scale_lr=False)
    trainer.fit()
    return _intervals(clock.times[args.warmup:])


def _autocast(precision: str) -> contextlib.AbstractContextManager:
    dtype = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(precision)
    return torch.autocast("cuda", dtype=dtype) if dtype else contextlib.nullcontext()


def time_loop(precision: str, args: argparse.Namespace, device: torch.device, horovod: bool) -> list[float]:
    """A hand-written loop: Horovod's DistributedOptimizer (``horovod``) or a plain optimizer."""
    model = build_model().to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    if horovod:
        hvd.broadcast_parameters(model.state_dict(), root_rank=0)
        optimizer = hvd.DistributedOptimizer(optimizer, named_parameters=model.named_parameters())
    scaler = torch.amp.GradScaler("cuda", enabled=precision == "16-mixed")
    images, labels = synthetic(args.batch_size, 1, device)
    times = []
    for _ in range(args.warmup + args.steps):
        with _autocast(precision):
            loss = nn.functional.cross_entropy(model(images), labels)
        scaler.scale(loss).backward()
        _step(optimizer, scaler, horovod)
        torch.cuda.synchronize()
        times.append(time.perf_counter())
    return _intervals(times[args.warmup:])


def _step(optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, horovod: bool) -> None:
    if horovod:
        optimizer.synchronize()
        scaler.unscale_(optimizer)
        with optimizer.skip_synchronize():
            scaler.step(optimizer)
    else:
        scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)


def _intervals(stamps: list[float]) -> list[float]:
    return [b - a for a, b in itertools.pairwise(stamps)]


def measure(args: argparse.Namespace) -> list[dict[str, Any]]:
    device = torch.device("cuda", hvd.local_rank())
    runners: dict[str, Callable[[str], list[float]]] = {
        "hvdtrain": lambda p: time_trainer(p, args, device),
        "horovod": lambda p: time_loop(p, args, device, horovod=True),
        "torch": lambda p: time_loop(p, args, device, horovod=False),
    }
    rows = []
    for precision in PRECISIONS:
        for loop in LOOPS:
            step = statistics.median(runners[loop](precision))
            rows.append({"loop": loop, "precision": precision, "step_ms": step * 1e3,
                         "samples_per_sec": args.batch_size / step})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def markdown(rows: list[dict[str, Any]], args: argparse.Namespace) -> str:
    lookup = {(r["loop"], r["precision"]): r for r in rows}
    lines = [f"# GPU performance\n\nResNet-50, synthetic 224x224 images, batch {args.batch_size}, one "
             f"{torch.cuda.get_device_name()} (torch {torch.__version__}, CUDA {torch.version.cuda}, NCCL "
             f"{'.'.join(map(str, torch.cuda.nccl.version()))}); median of {args.steps} steps after "
             f"{args.warmup} warm-up steps, channels-last, `cudnn.benchmark` on. In float32, convolutions "
             f"{'run in TF32' if torch.backends.cudnn.allow_tf32 else 'run in full float32'} and matrix products "
             f"{'in TF32' if torch.backends.cuda.matmul.allow_tf32 else 'in full float32'} (torch's defaults). "
             "Written by `make bench-gpu`.\n",
             "| precision | hvdtrain samples/s | raw Horovod | plain torch | hvdtrain step ms | hvdtrain / Horovod |",
             "|---|---:|---:|---:|---:|---:|"]
    for precision in PRECISIONS:
        ours, raw, plain = (lookup[(loop, precision)] for loop in LOOPS)
        lines.append(f"| {precision} | {ours['samples_per_sec']:.0f} | {raw['samples_per_sec']:.0f} | "
                     f"{plain['samples_per_sec']:.0f} | {ours['step_ms']:.1f} | "
                     f"{ours['samples_per_sec'] / raw['samples_per_sec']:.3f} |")
    speedup = lookup[("hvdtrain", "bf16-mixed")]["samples_per_sec"] / lookup[("hvdtrain", "32")]["samples_per_sec"]
    lines.append(f"\nbf16-mixed / float32 under hvdtrain: {speedup:.2f}x.\n")
    return "\n".join(lines)


@contextlib.contextmanager
def horovod_job() -> Iterator[None]:
    ht.init()
    if not torch.cuda.is_available():
        raise SystemExit("the GPU benchmark needs CUDA; run it on a machine with an NVIDIA GPU")
    torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick its fastest convolutions once
    yield


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--output", type=Path, default=REPORT)
    args = parser.parse_args()
    with horovod_job():
        rows = measure(args)
    if hvd.rank() == 0:
        args.output.write_text(markdown(rows, args))
        print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
