"""Experiment tracking with MLflow, on rank 0 only: parameters, epoch metrics, the best checkpoint."""
from __future__ import annotations

import dataclasses
from typing import Any

from hvdtrain.callbacks.base import Callback, Order
from hvdtrain.callbacks.checkpoint import ModelCheckpoint
from hvdtrain.core.context import TrainContext
from hvdtrain.core.distributed import rank_zero_only

MISSING = ("MLflowLogger needs the mlflow package, which is not installed: pip install 'hvdtrain[mlflow]' "
           "(or pip install mlflow)")


def import_mlflow() -> Any:
    """The ``mlflow`` module, or an ImportError naming the extra that installs it."""
    try:
        import mlflow
    except ImportError as error:
        raise ImportError(MISSING) from error
    return mlflow


class MLflowLogger(Callback):
    """Logs a run to MLflow from rank 0: parameters at the start, metrics every epoch, and at the end
    the best checkpoint (or the newest, without a monitored metric) as an artifact.

    Args:
        tracking_uri: where runs are stored, e.g. ``sqlite:///mlflow.db`` (no server
            needed); None keeps MLflow's default (``MLFLOW_TRACKING_URI`` or ``./mlruns``).
        experiment: the experiment name; None keeps MLflow's default experiment.
        run_name: the run's name.
        params: parameters to record; ``TrainingOptions`` are recorded field by field.
    """

    order = Order.CHECKPOINT + 10  # after the epoch's checkpoint is written

    def __init__(self, tracking_uri: str | None = None, experiment: str | None = None, run_name: str | None = None,
                 params: Any = None) -> None:
        self.mlflow = import_mlflow()  # fails on every rank at construction, not later on rank 0 alone
        self.tracking_uri, self.experiment, self.run_name = tracking_uri, experiment, run_name
        self.params = params
        self.run_id: str | None = None

    @rank_zero_only
    def on_train_begin(self, ctx: TrainContext) -> None:
        if self.tracking_uri is not None:
            self.mlflow.set_tracking_uri(self.tracking_uri)
        if self.experiment is not None:
            self.mlflow.set_experiment(self.experiment)
        run = self.mlflow.start_run(run_name=self.run_name)
        self.run_id = run.info.run_id
        self.mlflow.log_params({"world_size": ctx.size, **_flat_params(self.params)})

    @rank_zero_only
    def on_epoch_end(self, ctx: TrainContext) -> None:
        metrics = {name: float(value) for name, value in ctx.logs.items() if _is_number(value)}
        self._continue_run()
        self.mlflow.log_metrics(metrics, step=ctx.epoch + 1)

    @rank_zero_only
    def on_train_end(self, ctx: TrainContext) -> None:
        self._continue_run()
        best = self._best_checkpoint(ctx)
        if best is not None and best.is_dir():  # a pipeline's checkpoint: its manifest and stage parts
            self.mlflow.log_artifacts(str(best), artifact_path=f"checkpoints/{best.name}")
        elif best is not None:
            self.mlflow.log_artifact(str(best), artifact_path="checkpoints")
        self.mlflow.end_run()

    @rank_zero_only
    def on_exception(self, ctx: TrainContext, error: BaseException) -> None:
        if self.mlflow.active_run() is not None:
            self.mlflow.end_run(status="FAILED")

    def state_dict(self) -> dict[str, Any] | None:
        # Every rank holds the run id after an elastic sync, so a process that becomes rank 0 goes on logging it.
        return {"run_id": self.run_id} if self.run_id else None

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.run_id = state.get("run_id")

    def _continue_run(self) -> None:
        """On a process that became rank 0 (elastic training lost rank 0): reopen the job's run."""
        if self.mlflow.active_run() is None and self.run_id is not None:
            if self.tracking_uri is not None:
                self.mlflow.set_tracking_uri(self.tracking_uri)
            self.mlflow.start_run(run_id=self.run_id)

    @staticmethod
    def _best_checkpoint(ctx: TrainContext) -> Any:
        for callback in ctx.callbacks or ():
            if isinstance(callback, ModelCheckpoint):
                best = callback.manager.best(1) or callback.manager.checkpoints()[-1:]
                return best[0].path if best else None
        return None


def _flat_params(params: Any) -> dict[str, str]:
    if params is None:
        return {}
    if dataclasses.is_dataclass(params):
        params = {f.name: getattr(params, f.name) for f in dataclasses.fields(params)}
    return {name: str(value) for name, value in params.items() if not callable(value)}


def _is_number(value: Any) -> bool:
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return True
