"""What the PyTorch and TensorFlow Horovod backends share. The framework's Horovod module is passed in,
so the core imports neither Horovod nor a framework."""
from __future__ import annotations

import contextlib
import functools
import itertools
import os
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import numpy as np

from hvdtrain.core import job_reports
from hvdtrain.core.distributed import local_slot
from hvdtrain.core.elastic import ElasticState
from hvdtrain.core.layout import Layout
from hvdtrain.engine.mpi_world import MpiWorld
from hvdtrain.engine.peers import PeerChannel
from hvdtrain.engine.reporting import reporter_from_env
from hvdtrain.engine.watchdog import Watchdog, start_heartbeat, timeout_from_env

T = TypeVar("T")


class HorovodBackendBase:
    """Rank information and Horovod collectives with names every rank agrees on.

    Horovod matches collectives across ranks by name. Its default name for an
    object collective is the object's type, which differs across ranks when
    they pass different kinds of values (a hang); a counter shared by all ranks
    never clashes. Subclasses turn a float vector into their framework's tensor.

    Args:
        hvd: ``horovod.torch`` or ``horovod.tensorflow``, already initialized.
        init_hint: the call that initializes it, for the error message.
        elastic_state_base: Horovod's ``horovod.common.elastic.State``, which its elastic run drives.
    """

    # One per process, shared by every instance: collective names come from one sequence, and one
    # thread watches the waits.
    _calls = itertools.count()
    _watchdog: Watchdog | None = None
    # Set by a model-parallel init (``initialize(pipeline=P)`` or ``tensor=T``); else the live world's layout.
    _fixed_layout: Layout | None = None
    _data_process_set: Any = None
    _tensor_process_set: Any = None
    _peer_comm: Any = None  # (mpi4py's MPI module, the pipeline's communicator)
    _peers: PeerChannel | None = None
    # A pipeline's world, when Horovod's is one stage's replicas (``initialize(pipeline=P)``).
    _world: MpiWorld | None = None

    def __init__(self, hvd: Any, init_hint: str, elastic_state_base: type) -> None:
        if not hvd.is_initialized():
            raise RuntimeError(f"Horovod is not initialized; call {init_hint} first")
        self.hvd = hvd
        self._elastic_state_base = elastic_state_base
        if HorovodBackendBase._watchdog is None:
            HorovodBackendBase._watchdog = self._start_watching()
        start_heartbeat()

    def _start_watching(self) -> Watchdog:
        """This process's watchdog, and its reports to ``hvdtrain run`` (when it started the job)."""
        watchdog = Watchdog(self.rank, timeout_from_env())
        reporter = reporter_from_env(lambda: self.rank, lambda: watchdog.rank, watchdog.waiting)
        if reporter is not None:
            watchdog.on_timeout = functools.partial(reporter.failed, job_reports.COLLECTIVE_TIMEOUT)
            reporter.start()
        return watchdog

    # Read live: elastic training rebuilds the world under a running backend.

    @property
    def mpi_world(self) -> MpiWorld | None:
        """The world's collectives over MPI, when Horovod's world is smaller (a pipeline); else None."""
        return HorovodBackendBase._world

    @property
    def rank(self) -> int:
        world = self.mpi_world
        return world.rank if world else self.hvd.rank()

    @property
    def size(self) -> int:
        world = self.mpi_world
        return world.size if world else self.hvd.size()

    @property
    def local_rank(self) -> int:
        return local_slot(*self._node_slot())[0]

    @property
    def local_size(self) -> int:
        return local_slot(*self._node_slot())[1]

    def _node_slot(self) -> tuple[int, int]:
        world = self.mpi_world
        return (world.local_rank, world.local_size) if world else (self.hvd.local_rank(), self.hvd.local_size())

    @property
    def layout(self) -> Layout:
        """Stages x replicas; without a pipeline every rank is a replica (read live: elastic resizes)."""
        return HorovodBackendBase._fixed_layout or Layout.data_parallel(self.size, self.rank)

    @property
    def data_process_set(self) -> Any:
        """The Horovod process set of this rank's data-parallel group: Horovod's global set when Horovod's world
        is that group (the whole job without model parallelism; in a pipeline, the stage's replicas), None
        when this rank is its stage's only replica (nothing to average)."""
        layout = self.layout
        if layout.data_size == 1 and layout.world_size > 1:
            return None
        return HorovodBackendBase._data_process_set or self.hvd.global_process_set

    def data_rank_in_horovod(self, data_rank: int) -> int:
        """Horovod's rank of this rank's data-parallel replica ``data_rank`` (in a pipeline Horovod's world
        is the stage's replicas; elsewhere Horovod's world is the job's)."""
        if self.mpi_world is not None:
            return data_rank
        layout = self.layout
        return layout.rank_of(layout.stage, data_rank)

    @property
    def tensor_process_set(self) -> Any:
        """The Horovod process set of this rank's tensor group (``initialize(tensor=T)``): Horovod's global set
        when it is the whole world, None without tensor parallelism."""
        if self.layout.tensor == 1:
            return None
        return HorovodBackendBase._tensor_process_set or self.hvd.global_process_set

    @property
    def peers(self) -> PeerChannel:
        """Point-to-point messages to other ranks (a pipeline's activations and gradients)."""
        if HorovodBackendBase._peer_comm is None:
            raise RuntimeError("point-to-point messages need MPI: initialize with hvdtrain.torch.init(pipeline=P) "
                               "and launch with hvdtrain run (MPI), mpirun or horovodrun --mpi")
        if HorovodBackendBase._peers is None:
            HorovodBackendBase._peers = PeerChannel(*HorovodBackendBase._peer_comm, self.watch)
        return HorovodBackendBase._peers

    @property
    def watchdog(self) -> Watchdog:
        return HorovodBackendBase._watchdog

    def refresh(self) -> None:
        """After the world was rebuilt: collective names restart from 0, as in a worker that just joined."""
        HorovodBackendBase._calls = itertools.count()
        self.watchdog.rank = self.rank

    @property
    def elastic(self) -> bool:
        """Launched by ``horovodrun`` in elastic mode (``hvdtrain run --elastic``)."""
        return os.environ.get("HOROVOD_ELASTIC") == "1"

    def run_elastic(self, train: Callable[[], T], state: ElasticState) -> T:
        """``train()`` under Horovod's elastic loop, with hvdtrain's state.

        Horovod syncs ``state`` from rank 0 and calls ``train``. When a worker is lost the others
        restore their last commit; when hosts are added or removed (noticed at a commit) they keep it.
        Either way Horovod rebuilds the world, this backend re-reads its rank and size, and the
        sync and ``train`` run again. (Horovod skips the sync when hosts were only removed; the commit
        is then loaded for the new world before ``train``.)
        """
        backend = self

        class HorovodElasticState(self._elastic_state_base):  # type: ignore[name-defined]
            def save(self) -> None:
                state.save()

            def restore(self) -> None:
                state.restore()

            def sync(self) -> None:
                backend.recoverable(state.sync)

            def reset(self) -> None:
                backend.refresh()

        bridge = HorovodElasticState(bcast_object=self.broadcast_object, get_rank=lambda: self.rank)
        state.check_host_updates = bridge.check_host_updates

        def attempt(_: Any) -> T:
            state.adopt_world()
            return self.recoverable(train)

        return self.elastic_loop(attempt)(bridge)

    def elastic_loop(self, attempt: Callable[[Any], T]) -> Callable[[Any], T]:
        """Horovod's elastic loop around ``attempt(state)``: sync, run, and on a lost or added worker
        restore or keep the commit, rebuild the world and go again."""
        return self.hvd.elastic.run(attempt)

    def recoverable(self, run: Callable[[], T]) -> T:
        """``run()``; a collective that failed because a worker was lost raises Horovod's
        ``HorovodInternalError``, which the elastic run recovers from. Frameworks whose collectives
        fail with their own errors translate them here."""
        return run()

    def watch(self, what: str) -> contextlib.AbstractContextManager:
        """Time a wait for the other ranks; past ``HVDTRAIN_COLLECTIVE_TIMEOUT`` this rank exits, naming it."""
        return self.watchdog.watch(what)

    def name(self, kind: str) -> str:
        """A fresh collective name, the same on every rank that calls collectives in the same order."""
        return f"hvdtrain.{kind}.{next(self._calls)}"

    def allreduce_sum(self, values: Sequence[float]) -> list[float]:
        return self._reduce_floats(values, "sum", self.hvd.Sum)

    def allreduce_max(self, values: Sequence[float]) -> list[float]:
        return self._reduce_floats(values, "max", self.hvd.Max)

    def _reduce_floats(self, values: Sequence[float], op: str, horovod_op: Any) -> list[float]:
        name = self.name(f"allreduce_{op}")
        with self.watch(f"the collective {name}"):
            world = self.mpi_world
            if world:
                return world.reduce(np.asarray(values, dtype=np.float64), op).tolist()
            return self.allreduce_floats(values, horovod_op, name)

    def allreduce_floats(self, values: Sequence[float], op: Any, name: str) -> list[float]:
        """Reduce a float64 vector with ``op``; the framework-specific part."""
        raise NotImplementedError

    def broadcast_object(self, obj: Any, root: int = 0) -> Any:
        name = self.name("broadcast_object")
        with self.watch(f"the collective {name}"):
            world = self.mpi_world
            return world.broadcast_object(obj, root) if world else self.hvd.broadcast_object(obj, root_rank=root,
                                                                                            name=name)

    def allgather_object(self, obj: Any) -> list[Any]:
        name = self.name("allgather_object")
        with self.watch(f"the collective {name}"):
            world = self.mpi_world
            return world.allgather_object(obj) if world else self.hvd.allgather_object(obj, name=name)

    def barrier(self) -> None:
        # Not every framework binding has hvd.barrier; a one-element allreduce blocks the same way.
        self.allreduce_sum([0.0])


def initialize(hvd: Any, pipeline: int = 1, mpi: Callable[[], Any] | None = None, tensor: int = 1) -> None:
    """``hvd.init()``; with ``pipeline`` > 1 stages, Horovod on each stage's replicas alone, the layout, and
    MPI communicators for the world's collectives and the stages' point-to-point messages; with ``tensor`` > 1 slices,
    the layout and a Horovod process set per data group and per tensor group.

    Args:
        hvd: the framework's Horovod module.
        pipeline: pipeline stages per model replica.
        mpi: returns mpi4py's ``MPI`` module (imported by the adapter; importing it starts MPI).
        tensor: ranks each layer of ``hvdtrain.torch.tensor_parallel`` is split across.

    Raises:
        RuntimeError: a pipeline without an MPI launch, without MPI thread support; either under elastic;
            both at once.
        LayoutError: a world that is not a multiple of ``pipeline`` (or ``tensor``).
    """
    HorovodBackendBase._fixed_layout = HorovodBackendBase._data_process_set = None  # an earlier init's
    HorovodBackendBase._tensor_process_set = HorovodBackendBase._peer_comm = HorovodBackendBase._peers = None
    HorovodBackendBase._world = None
    if pipeline == 1 and tensor == 1:
        hvd.init()
        return
    what = f"pipeline={pipeline}" if pipeline > 1 else f"tensor={tensor}"
    if os.environ.get("HOROVOD_ELASTIC") == "1":
        why = ("Horovod's elastic mode rebuilds its world over Gloo as workers come and go, while a pipeline's "
               "stages run on fixed MPI communicators") if pipeline > 1 else \
            "Horovod's elastic mode breaks its process sets (horovod#4021), which tensor slices average over"
        raise RuntimeError(f"{what} cannot run under --elastic: {why}. Launch without --elastic "
                           "(hvdtrain run -np N, mpirun or horovodrun).")
    if pipeline > 1 and tensor > 1:
        raise RuntimeError(f"pipeline={pipeline} with tensor={tensor} is not supported yet: choose one of them")
    if tensor > 1:
        _initialize_tensor(hvd, tensor)
        return
    if mpi is None:
        raise RuntimeError(f"pipeline={pipeline} needs MPI's point-to-point messages, which this framework's "
                           "adapter does not provide")
    MPI = mpi()
    comm = _checked_mpi_world(pipeline, MPI)
    layout = Layout.for_world(comm.Get_size(), comm.Get_rank(), pipeline)
    # Horovod's world is this stage's replicas (``mpi_world``): its background thread then negotiates only
    # with the ranks that average gradients with this one, and with none when the stage has one replica.
    replicas = comm.Split(color=layout.stage, key=layout.data_rank)
    hvd.init(comm=replicas)  # joins the MPI that mpi4py started with MPI_THREAD_MULTIPLE
    if (hvd.size(), hvd.rank()) != (layout.data_size, layout.data_rank):
        raise RuntimeError(f"Horovod started on stage {layout.stage}'s replicas as rank {hvd.rank()} of "
                           f"{hvd.size()}, not as replica {layout.data_rank} of {layout.data_size}")
    HorovodBackendBase._fixed_layout = layout
    HorovodBackendBase._world = MpiWorld(MPI, comm.Dup())
    HorovodBackendBase._peer_comm = (MPI, comm.Dup())


def _initialize_tensor(hvd: Any, tensor: int) -> None:
    """``hvd.init`` with every data group's and tensor group's process set (each listed on every rank)."""
    size, rank = _launched_world()
    layout = Layout.for_world(size, rank, tensor=tensor)
    groups = sorted({tuple(g) for g in layout.data_groups() + layout.tensor_groups() if 1 < len(g) < size})
    sets = {group: hvd.ProcessSet(list(group)) for group in groups}  # a set of the whole world is refused
    hvd.init(process_sets=list(sets.values()))
    if (hvd.size(), hvd.rank()) != (size, rank):
        raise RuntimeError(f"the launcher said rank {rank} of {size}, Horovod says {hvd.rank()} of {hvd.size()}")
    HorovodBackendBase._fixed_layout = layout
    HorovodBackendBase._data_process_set = sets.get(tuple(layout.data_group()))
    HorovodBackendBase._tensor_process_set = sets.get(tuple(layout.tensor_group()))


def _launched_world() -> tuple[int, int]:
    """(size, rank) of this worker, as its launcher set them: Horovod's static process sets are given before
    Horovod has started, so its own answer comes too late."""
    for size, rank in (("HOROVOD_SIZE", "HOROVOD_RANK"), ("OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK"),
                       ("PMI_SIZE", "PMI_RANK")):
        if os.environ.get(size, "").isdigit() and os.environ.get(rank, "").isdigit():
            return int(os.environ[size]), int(os.environ[rank])
    raise RuntimeError("tensor parallelism sets up Horovod's process sets before Horovod starts, from the rank "
                       "and size the launcher gives (HOROVOD_RANK/SIZE, OMPI_COMM_WORLD_RANK/SIZE or PMI_RANK/SIZE), "
                       "and none is set: launch with hvdtrain run, horovodrun or mpirun")


def _checked_mpi_world(pipeline: int, MPI: Any) -> Any:
    """MPI's world for a pipeline, started by mpi4py with full thread support before Horovod joins it."""
    world = MPI.COMM_WORLD
    launched = int(os.environ.get("HOROVOD_SIZE", os.environ.get("OMPI_COMM_WORLD_SIZE", world.Get_size())))
    if world.Get_size() != launched:
        raise RuntimeError(f"pipeline={pipeline} needs an MPI launch, but this job of {launched} workers was not "
                           "started by MPI (a Gloo launch: horovodrun --gloo or hvdtrain run --gloo). Launch "
                           "with hvdtrain run --mpi, mpirun or horovodrun --mpi.")
    if MPI.Query_thread() != MPI.THREAD_MULTIPLE:
        raise RuntimeError("pipeline stages need MPI_THREAD_MULTIPLE (mpi4py's sends run beside Horovod's "
                           "thread); this MPI gives less: use Open MPI 4 or later")
    return world


def default_threads(local_size: int) -> int:
    """Threads per worker: ``OMP_NUM_THREADS`` if set, else this machine's usable cores shared by the local workers."""
    if os.environ.get("OMP_NUM_THREADS", "").isdigit():
        return max(1, int(os.environ["OMP_NUM_THREADS"]))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // max(local_size, 1))
