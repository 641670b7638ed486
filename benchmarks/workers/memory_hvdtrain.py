"""One rank's memory and speed with a ~21M-parameter MLP and Adam, sharded, split or neither (mpirun -np N).

    python benchmarks/workers/memory_hvdtrain.py --shard 1 [--precision 16-mixed]
    python benchmarks/workers/memory_hvdtrain.py --tensor 2      # the hidden layers split across 2 ranks

Reports, from the tensors themselves: the bytes of parameters, of the gradients held between the two
backward passes of a step, and of the optimizer state; the process's peak RSS; samples per second.
"""
from __future__ import annotations

import argparse
import itertools
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks.common import emit

WIDTHS = (1024, 4096, 4096, 10)  # 4.2M + 16.8M + 41k parameters


def tensor_bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if t is not None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shard", type=int, default=0)
    parser.add_argument("--tensor", type=int, default=1, help="split the hidden layers across this many ranks")
    parser.add_argument("--precision", default="32")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=6, help="optimizer steps timed (after 2 untimed)")
    args = parser.parse_args()
    import torch
    from torch import nn

    import hvdtrain.torch as ht
    from hvdtrain.callbacks import Callback
    from hvdtrain.torch.tensor_parallel import ColumnParallelLinear, RowParallelLinear, TensorGroup, is_tensor_parallel

    backend = ht.init(threads_per_worker=1, tensor=args.tensor)
    torch.manual_seed(0)
    layers = []
    for width_in, width_out in itertools.pairwise(WIDTHS):
        layers += [nn.Linear(width_in, width_out), nn.ReLU()]
    if args.tensor > 1:  # column -> ReLU -> row: the two big layers, split; the head stays whole
        group = TensorGroup.of(backend)
        layers[0] = ColumnParallelLinear.from_dense(layers[0], group)
        layers[2] = RowParallelLinear.from_dense(layers[2], group)
    model = nn.Sequential(*layers[:-1])
    replicas = backend.layout.data_size
    warmup, passes = 2, 2
    batches = (warmup + args.steps) * passes
    x = torch.randn(batches * args.batch_size * replicas, WIDTHS[0])
    y = torch.randint(0, WIDTHS[-1], (len(x),))
    measured: dict[str, float] = {}

    class Measure(Callback):
        def on_batch_end(self, ctx) -> None:
            if not ctx.outcome.updated:  # between the two passes: what a step holds while it accumulates
                grads = [p.grad for p in model.parameters()]
                grads += [p.grad for group in ctx.optimizer.param_groups for p in group["params"]
                          if getattr(ctx.optimizer, "sharding_stage", 0)]
                measured["gradient_bytes"] = max(measured.get("gradient_bytes", 0), tensor_bytes(grads))
            elif ctx.global_step == warmup:
                measured["start"] = time.perf_counter()

    trainer = ht.Trainer(model, torch.optim.Adam(model.parameters(), lr=1e-4), nn.functional.cross_entropy,
                         train_data=(x, y), batch_size=args.batch_size, backward_passes_per_step=passes,
                         shard_optimizer_state=args.shard, precision=args.precision, callbacks=[Measure()],
                         progress=False)
    trainer.fit()
    seconds = time.perf_counter() - measured["start"]
    state = [t for s in trainer.optimizer.state.values() for t in s.values() if torch.is_tensor(t) and t.dim() > 0]
    emit({"rank": backend.rank, "size": backend.size, "shard": args.shard, "tensor": args.tensor,
          "precision": args.precision,
          "parameters": sum(p.numel() * (args.tensor if is_tensor_parallel(p) else 1) for p in model.parameters()),
          "parameter_bytes": tensor_bytes(model.parameters()), "gradient_bytes": measured["gradient_bytes"],
          "optimizer_state_bytes": tensor_bytes(state),
          "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
          "samples_per_sec": args.steps * passes * args.batch_size * replicas / seconds})


if __name__ == "__main__":
    main()
