"""hvdtrain's Trainer with a 2-stage pipeline on the pipeline workload (launch with mpirun -np 2)."""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks.pipeline_workload import StepClock, data, parser, stage_layers


def main() -> None:
    args = parser(__doc__).parse_args()
    import torch

    import hvdtrain.torch as ht
    from hvdtrain.callbacks import Callback

    backend = ht.init(threads_per_worker=1, pipeline=2)
    clock = StepClock(args.warmup)

    class Clock(Callback):
        def on_batch_end(self, ctx) -> None:
            clock.step_done()

    trainer = ht.Trainer(lambda stage: stage_layers(stage, 2, args.width),
                         lambda params: torch.optim.SGD(params, lr=0.01, momentum=0.9),
                         torch.nn.functional.cross_entropy, data(args.warmup + args.steps, args.batch_size),
                         batch_size=args.batch_size, micro_batches=args.micro_batches,
                         pipeline_schedule=args.schedule, callbacks=[Clock()], progress=False, scale_lr=False)
    trainer.fit()
    clock.emit(backend.rank, "hvdtrain", args)


if __name__ == "__main__":
    main()
