"""torch.distributed.pipelining (Schedule1F1B / ScheduleGPipe on gloo) on the pipeline workload
(launch with torchrun --nproc_per_node 2)."""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks.pipeline_workload import StepClock, data, parser, stage_layers


def main() -> None:
    args = parser(__doc__).parse_args()
    import torch
    import torch.distributed as dist
    from torch.distributed.pipelining import PipelineStage, Schedule1F1B, ScheduleGPipe

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, stages = dist.get_rank(), dist.get_world_size()
    module = stage_layers(rank, stages, args.width)
    optimizer = torch.optim.SGD(module.parameters(), lr=0.01, momentum=0.9)
    stage = PipelineStage(module, rank, stages, torch.device("cpu"))
    kind = Schedule1F1B if args.schedule == "1f1b" else ScheduleGPipe
    schedule = kind(stage, n_microbatches=args.micro_batches, loss_fn=torch.nn.functional.cross_entropy)
    x, y = data(args.warmup + args.steps, args.batch_size)
    clock = StepClock(args.warmup)
    for start in range(0, len(x), args.batch_size):
        batch = slice(start, start + args.batch_size)
        if rank == 0:
            schedule.step(x[batch])
        elif rank == stages - 1:
            schedule.step(target=y[batch], losses=[])
        else:
            schedule.step()
        optimizer.step()
        optimizer.zero_grad()
        clock.step_done()
    clock.emit(rank, "torch.distributed.pipelining", args)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
