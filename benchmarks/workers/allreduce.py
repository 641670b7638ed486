"""Allreduce latency and bandwidth by message size (float32 sums, in place).

Launch:
    mpirun -np 2 python benchmarks/workers/allreduce.py --impl hvd
    horovodrun -np 2 --gloo python benchmarks/workers/allreduce.py --impl hvd
    python -m torch.distributed.run --nproc_per_node 2 benchmarks/workers/allreduce.py --impl torch
    mpirun -np 2 python benchmarks/workers/allreduce.py --impl mpi4py

Rank 0 prints one ``BENCH_RESULT {json}`` line with a row per size.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks.common import emit, set_thread_env

DEFAULT_SIZES = [4 << 10, 16 << 10, 64 << 10, 256 << 10, 1 << 20, 4 << 20, 16 << 20, 64 << 20]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--impl", choices=("hvd", "torch", "mpi4py"), default="hvd")
    parser.add_argument("--sizes", type=lambda s: [int(v) for v in s.split(",")], default=DEFAULT_SIZES,
                        help="comma-separated message sizes in bytes")
    parser.add_argument("--budget-mb", type=float, default=512.0,
                        help="bytes reduced per size (sets the iteration count)")
    parser.add_argument("--min-iters", type=int, default=5)
    parser.add_argument("--max-iters", type=int, default=200)
    parser.add_argument("--variant", default="")
    return parser.parse_args()


def setup(impl: str) -> tuple[int, int, Callable[[Any], None], Callable[[int], Any]]:
    """``(rank, size, allreduce_in_place, make_buffer)`` for one implementation."""
    import torch

    torch.set_num_threads(1)
    if impl == "hvd":
        import horovod.torch as hvd

        hvd.init()
        return hvd.rank(), hvd.size(), lambda t: hvd.allreduce_(t, op=hvd.Sum), _torch_buffer
    if impl == "torch":
        import torch.distributed as dist

        dist.init_process_group("gloo")
        return dist.get_rank(), dist.get_world_size(), dist.all_reduce, _torch_buffer
    from mpi4py import MPI

    comm = MPI.COMM_WORLD

    def reduce(buf: Any) -> None:
        comm.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)

    return comm.Get_rank(), comm.Get_size(), reduce, _numpy_buffer


def _torch_buffer(nbytes: int) -> Any:
    import torch

    return torch.ones(max(nbytes // 4, 1), dtype=torch.float32)


def _numpy_buffer(nbytes: int) -> Any:
    import numpy as np

    return np.ones(max(nbytes // 4, 1), dtype=np.float32)


def measure(reduce: Callable[[Any], None], buf: Any, iters: int, size: int) -> dict[str, float]:
    """Time ``iters`` allreduces of ``buf`` one by one (after 3 warmup calls)."""
    for _ in range(3):
        reduce(buf)
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        reduce(buf)
        times.append(time.perf_counter() - start)
    nbytes = buf.numel() * 4 if hasattr(buf, "numel") else buf.nbytes
    median = statistics.median(times)
    algbw = nbytes / median / 1e9
    return {"bytes": nbytes, "iters": iters, "median_ms": round(median * 1e3, 4),
            "mean_ms": round(statistics.fmean(times) * 1e3, 4), "min_ms": round(min(times) * 1e3, 4),
            "algbw_gbps": round(algbw, 4),
            # Bytes each rank moves in a ring allreduce: the figure comparable across world sizes.
            "busbw_gbps": round(algbw * 2 * (size - 1) / size, 4)}


def main() -> None:
    args = parse_args()
    set_thread_env(1)
    rank, size, reduce, make_buffer = setup(args.impl)
    rows = []
    for nbytes in args.sizes:
        iters = int(min(max(args.budget_mb * (1 << 20) / nbytes, args.min_iters), args.max_iters))
        rows.append(measure(reduce, make_buffer(nbytes), iters, size))
    if rank == 0:
        emit({"variant": args.variant or args.impl, "rank": rank, "size": size, "rows": rows})
    if args.impl == "torch":
        shutdown_torch_distributed()


def shutdown_torch_distributed() -> None:
    """Leave together: a rank exiting while its peer is still connected aborts in Gloo."""
    import torch.distributed as dist

    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
