"""The pipeline workload's whole model in one process, no pipeline: the baseline of the speed-up."""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks.pipeline_workload import StepClock, data, parser, stage_layers


def main() -> None:
    args = parser(__doc__).parse_args()
    import torch

    torch.set_num_threads(1)
    model = stage_layers(0, 1, args.width)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x, y = data(args.warmup + args.steps, args.batch_size)
    clock = StepClock(args.warmup)
    for start in range(0, len(x), args.batch_size):
        batch = slice(start, start + args.batch_size)
        torch.nn.functional.cross_entropy(model(x[batch]), y[batch]).backward()
        optimizer.step()
        optimizer.zero_grad()
        clock.step_done()
    clock.emit(0, "one process", args)


if __name__ == "__main__":
    main()
