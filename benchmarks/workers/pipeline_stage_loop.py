"""hvdtrain's stage loop (StagePipeline) without the Trainer, on the pipeline workload (launch with mpirun -np 2):
what the Trainer's step adds over the bare pipeline passes."""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks.pipeline_workload import StepClock, data, parser, stage_layers


def main() -> None:
    args = parser(__doc__).parse_args()
    import torch

    import hvdtrain.torch as ht
    from hvdtrain.torch.pipeline import StagePipeline

    backend = ht.init(threads_per_worker=1, pipeline=2)
    layout = backend.layout
    module = stage_layers(layout.stage, 2, args.width)
    optimizer = torch.optim.SGD(module.parameters(), lr=0.01, momentum=0.9)
    stages = StagePipeline(module, layout, backend.peers, args.schedule, args.micro_batches, torch.device("cpu"))
    x, y = data(args.warmup + args.steps, args.batch_size)
    clock = StepClock(args.warmup)

    def step(outputs, targets):
        return {"loss": torch.nn.functional.cross_entropy(outputs, targets)}

    for start in range(0, len(x), args.batch_size):
        batch = slice(start, start + args.batch_size)
        stages.train(x[batch], y[batch], args.batch_size, step, lambda loss: loss.backward())
        optimizer.step()
        optimizer.zero_grad()
        clock.step_done()
    clock.emit(layout.rank, "hvdtrain stage loop", args)


if __name__ == "__main__":
    main()
