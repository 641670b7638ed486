"""Rank-0 checkpointing and exact resume, on top of ``CheckpointManager``."""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from hvdtrain._version import __version__
from hvdtrain.callbacks.base import Callback, Order
from hvdtrain.callbacks.monitor import Monitor
from hvdtrain.core.checkpoint import (
    MANIFEST,
    CheckpointError,
    CheckpointInfo,
    CheckpointManager,
    layout_part_name,
    load_file,
)
from hvdtrain.core.checkpoint_io import read_checkpoint, read_header
from hvdtrain.core.context import TrainContext
from hvdtrain.core.elastic import rescale_for_world_size
from hvdtrain.core.layout import Layout
from hvdtrain.core.state_codec import LegacyCheckpointError, legacy_message

log = logging.getLogger("hvdtrain")


class ModelCheckpoint(Callback):
    """Saves model, optimizer, callbacks, counters, RNG and sampler position from rank 0.

    Every rank takes part (RNG states are gathered), rank 0 writes atomically,
    and the outcome is broadcast so that a failed write stops every rank with
    the same error instead of leaving the others waiting. A model split into pipeline stages is
    saved as a directory: each stage's first replica writes that stage's part, and rank 0 writes
    the manifest (counters, callbacks, RNG) once every part is written.

    Args:
        directory: checkpoint directory.
        monitor: metric for best-k retention; None keeps only the last N.
        mode: "min", "max" or "auto" for ``monitor``.
        keep_last: newest checkpoints to keep.
        keep_best: best checkpoints (by ``monitor``) to keep.
        every_n_epochs: save at the end of every n-th epoch (0 disables).
        every_n_steps: also save every n optimizer steps, mid-epoch (None disables). Saves fall on
            optimizer steps, so accumulated gradients are never left out of a checkpoint.
    """

    order = Order.CHECKPOINT

    def __init__(self, directory: str | os.PathLike, monitor: str | None = None, mode: str = "auto",
                 keep_last: int = 2, keep_best: int = 1, every_n_epochs: int = 1,
                 every_n_steps: int | None = None) -> None:
        self.monitor = Monitor(monitor, mode) if monitor else None
        self.manager = CheckpointManager(directory, keep_last=keep_last,
                                         keep_best=keep_best if monitor else 0,
                                         mode=self.monitor.mode if self.monitor else "min")
        self.every_n_epochs = every_n_epochs
        self.every_n_steps = every_n_steps
        self.last_saved: Path | None = None

    def on_batch_end(self, ctx: TrainContext) -> None:
        if self.every_n_steps and ctx.outcome.updated and ctx.global_step % self.every_n_steps == 0:
            self.save(ctx, ctx.progress.resume_point(), score=None)

    def on_epoch_end(self, ctx: TrainContext) -> None:
        if self.every_n_epochs and (ctx.epoch + 1) % self.every_n_epochs == 0:
            score = self.monitor.read(ctx.logs) if self.monitor else None
            self.save(ctx, ctx.progress.next_epoch_point(), score)

    def save(self, ctx: TrainContext, resume_point: dict[str, Any], score: float | None) -> Path:
        """Collective: gather RNG states, write on rank 0, share the outcome."""
        rng_states = ctx.backend.allgather_object(ctx.adapter.rng_state())
        model_optimizer = ctx.adapter.state_dict(ctx.model, ctx.optimizer)  # collective for sharded state
        if ctx.layout.parts > 1:
            outcome = self._save_stages(ctx, model_optimizer, resume_point, score, rng_states)
        else:
            outcome = self._write(ctx, model_optimizer, resume_point, score, rng_states) if ctx.is_root else {}
        outcome = ctx.backend.broadcast_object(outcome)
        if "error" in outcome:
            raise CheckpointError(outcome["error"])
        self.last_saved = Path(outcome["path"])
        return self.last_saved

    def _write(self, ctx: TrainContext, model_optimizer: dict[str, Any], resume_point: dict[str, Any],
               score: float | None, rng_states: list[Any]) -> dict[str, Any]:
        state = {"model_optimizer": model_optimizer, **self._run_state(ctx, resume_point, rng_states)}
        return self._saved(self._attempt(lambda: self.manager.save(
            ctx.adapter.serialize(state), epoch=resume_point["epoch"], global_step=ctx.global_step, score=score,
            metadata=self._metadata(ctx))))

    def _save_stages(self, ctx: TrainContext, model_optimizer: dict[str, Any], resume_point: dict[str, Any],
                     score: float | None, rng_states: list[Any]) -> dict[str, Any]:
        """Collective: each stage's first replica writes its part; rank 0 commits the manifest, if all succeeded."""
        layout, epoch = ctx.layout, resume_point["epoch"]
        checkpoint = self.manager.directory_for(epoch, ctx.global_step)
        written = None
        if layout.data_rank == 0:
            header = {"stage": layout.stage, "pipeline": layout.pipeline, "tensor_rank": layout.tensor_rank,
                      "tensor": layout.tensor, "epoch": epoch, "global_step": ctx.global_step}
            written = self._attempt(lambda: self.manager.save_part(
                checkpoint, layout_part_name(layout), ctx.adapter.serialize(model_optimizer), header))
            if "path" in written:
                written["sha256"] = read_header(Path(written["path"]))["payload_sha256"]
        reports = [report for report in ctx.backend.allgather_object(written) if report is not None]
        failed = [report for report in reports if "error" in report]
        if failed:
            return failed[0] if ctx.is_root else {}
        if not ctx.is_root:
            return {}
        parts = {Path(report["path"]).name: report["sha256"] for report in reports}
        state = self._run_state(ctx, resume_point, rng_states)
        return self._saved(self._attempt(lambda: self.manager.save_manifest(
            checkpoint, ctx.adapter.serialize(state), parts, epoch=epoch, global_step=ctx.global_step, score=score,
            metadata=self._metadata(ctx))))

    @staticmethod
    def _saved(outcome: dict[str, Any]) -> dict[str, Any]:
        if "path" in outcome:
            log.info("saved checkpoint %s", outcome["path"])
        return outcome

    @staticmethod
    def _run_state(ctx: TrainContext, resume_point: dict[str, Any], rng_states: list[Any]) -> dict[str, Any]:
        return {"progress": resume_point, "history": list(ctx.history),
                "callbacks": ctx.callbacks.state_dict() if ctx.callbacks else {}, "rng": rng_states}

    def _metadata(self, ctx: TrainContext) -> dict[str, Any]:
        return {"world_size": ctx.size, "data_size": ctx.data_size, "pipeline": ctx.layout.pipeline,
                "tensor": ctx.layout.tensor,
                "framework": ctx.adapter.name, "monitor": self.monitor.metric if self.monitor else None,
                "versions": dict(ctx.adapter.versions(), hvdtrain=__version__)}

    def _attempt(self, write: Any) -> dict[str, Any]:
        """``{"path": write()}``, or ``{"error": ...}`` naming the problem and the fix: never raised on one
        rank alone, which would leave the others waiting in the save's next collective."""
        try:
            path = write()
        except OSError as err:
            return {"error": f"could not write a checkpoint in {self.manager.directory}: {err}. "
                             "Free disk space or choose another checkpoint directory; the previous "
                             "checkpoints are untouched."}
        except CheckpointError as err:
            return {"error": str(err)}
        except Exception as err:
            log.exception("could not encode the checkpoint state")
            return {"error": f"could not encode the checkpoint state: {type(err).__name__}: {err}"}
        log.debug("wrote %s", path)
        return {"path": str(path)}


class ResumeFromCheckpoint(Callback):
    """Resumes from the newest valid checkpoint (or one file), loaded on rank 0.

    Rank 0 loads model and optimizer state; ``BroadcastInitialState`` (which
    runs next) spreads them. Counters, callback states and the per-rank RNG
    states are broadcast here. Corrupted files are reported and skipped in
    favour of the previous good one.

    Args:
        source: a checkpoint directory (newest valid file) or one checkpoint file.
        required: fail when no checkpoint exists instead of starting fresh.
        on_world_size_change: "reshard" (continue, re-sharding the data and
            rescaling the LR) or "error".
    """

    order = Order.RESUME

    def __init__(self, source: str | os.PathLike, required: bool = False,
                 on_world_size_change: str = "reshard") -> None:
        if on_world_size_change not in ("reshard", "error"):
            raise ValueError("on_world_size_change must be 'reshard' or 'error' "
                             f"(got {on_world_size_change!r})")
        self.source = Path(source)
        self.required = required
        self.on_world_size_change = on_world_size_change

    def on_train_begin(self, ctx: TrainContext) -> None:
        if ctx.elastic:
            self._resume_root_only(ctx)
            return
        found: dict[str, Any] = {}
        if ctx.is_root:
            found = self._load_on_root(ctx)
        found = ctx.backend.broadcast_object(found)
        if "error" in found:
            raise CheckpointError(found["error"])
        if "path" not in found:
            if self.required:
                raise CheckpointError(f"no checkpoint found in {self.source}; train without resume first")
            log.info("no checkpoint in %s: starting from scratch", self.source)
            return
        self._restore_everywhere(ctx, found)

    def _resume_root_only(self, ctx: TrainContext) -> None:
        """Elastic start: rank 0 loads alone (a worker joining later must run no collective here); the
        elastic sync then spreads its state, or its error to every rank."""
        if not ctx.is_root:
            return
        found = self._load_on_root(ctx)
        if "error" in found:
            ctx.startup_error = found["error"]
        elif "path" in found:
            found["rng"] = found["rng"][:1]  # per-rank streams restart: the ranks are not the same processes
            self._restore_everywhere(ctx, found)
        elif self.required:
            ctx.startup_error = f"no checkpoint found in {self.source}; train without resume first"

    def _load_on_root(self, ctx: TrainContext) -> dict[str, Any]:
        try:
            loaded = self._find()
        except CheckpointError as err:
            return {"error": str(err)}
        if loaded is None:
            return {}
        info, payload = loaded
        old_size = int(info.header.get("data_size", info.header.get("world_size", ctx.data_size)))
        old_stages, old_tensor = int(info.header.get("pipeline", 1)), int(info.header.get("tensor", 1))
        if (old_stages, old_tensor) != (ctx.layout.pipeline, ctx.layout.tensor):
            return {"error": f"{info.path} was written by {Layout(old_stages, old_size, 0, old_tensor).describe()} "
                             f"but this job is {ctx.layout.describe()}: a checkpoint resumes only with its stage and "
                             f"tensor-slice counts. Relaunch with hvdtrain.torch.init(pipeline={old_stages}, "
                             f"tensor={old_tensor}) (any multiple of {old_stages * old_tensor} workers)."}
        if old_size != ctx.data_size and self.on_world_size_change == "error":
            return {"error": f"{info.path} was written by {old_size} data-parallel replica(s) but this job has "
                             f"{ctx.data_size}. Relaunch with -np {old_size * old_stages * old_tensor}, or resume "
                             "with on_world_size_change='reshard' to re-shard the data."}
        try:
            state = ctx.adapter.deserialize(payload)
        except LegacyCheckpointError as err:
            return {"error": legacy_message(info.path, err)}
        except CheckpointError as err:
            return {"error": f"{info.path} was refused: {err}"}
        try:
            return self._restore_on_root(ctx, info, state, old_size)
        except Exception as err:  # sent to every rank: raising here alone would hang the others
            log.exception("could not restore %s", info.path)
            return {"error": f"could not restore {info.path}: {type(err).__name__}: {err}"}

    def _restore_on_root(self, ctx: TrainContext, info: CheckpointInfo, state: dict[str, Any],
                         old_size: int) -> dict[str, Any]:
        if not info.parts:  # a directory's parts are loaded by their stages, in _restore_everywhere
            ctx.adapter.load_state_dict(ctx.model, ctx.optimizer, state["model_optimizer"])
        history = state.get("history", state["progress"].get("history", []))  # 0.1.0 kept it in "progress"
        return {"path": str(info.path), "data_size": old_size, "progress": state["progress"], "history": history,
                "callbacks": state["callbacks"], "rng": state["rng"], "stage_parts": bool(info.parts)}

    def _find(self) -> tuple[CheckpointInfo, bytes] | None:
        if self.source.is_file() or self.source.suffix == ".ckpt" or (self.source / MANIFEST).is_file():
            return load_file(self.source)
        return CheckpointManager(self.source).load_latest()

    @staticmethod
    def _load_stage(ctx: TrainContext, checkpoint: Path) -> None:
        """Collective: every rank loads its part; a failure on any rank fails every rank alike."""
        part = checkpoint / layout_part_name(ctx.layout)
        try:
            ctx.adapter.load_state_dict(ctx.model, ctx.optimizer, ctx.adapter.deserialize(read_checkpoint(part)[1]))
            error = None
        except Exception as err:  # agreed below: raising on this rank alone would leave the others waiting
            error = f"rank {ctx.rank} could not load {part}: {type(err).__name__}: {err}"
        errors = [each for each in ctx.backend.allgather_object(error) if each]
        if errors:
            raise CheckpointError(errors[0] + " (every stage must reach the checkpoint directory: a shared "
                                              "file system)")

    def _restore_everywhere(self, ctx: TrainContext, found: dict[str, Any]) -> None:
        if found.get("stage_parts"):
            self._load_stage(ctx, Path(found["path"]))
        ctx.progress.load(found["progress"])
        ctx.history = list(found["history"])
        if ctx.callbacks is not None:
            ctx.callbacks.load_state_dict(found["callbacks"])
        old_size = found["data_size"]
        if old_size == ctx.data_size:
            ctx.adapter.set_rng_state(found["rng"][ctx.rank])
        else:
            log.warning("checkpoint was written by %d data-parallel replica(s), resuming on %d: re-sharding the data, "
                        "rescaling learning rates by %d/%d (a framework schedule follows the world size itself); "
                        "per-rank RNG streams restart from the seed",
                        old_size, ctx.data_size, ctx.data_size, old_size)
            rescale_for_world_size(ctx, old_size)
        ctx.resumed_from = found["path"]
        log.info("resumed from %s at epoch %d, step %d (batch %d of the epoch)", found["path"],
                 ctx.epoch, ctx.global_step, ctx.batch_index)
