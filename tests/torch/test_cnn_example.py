"""The CNN images example under ``hvdtrain run -np 2``, with MLflow tracking to a local SQLite store."""
from __future__ import annotations

import re
import time

import pytest

from tests.launch import REPO
from tests.launcher.helpers import hvdtrain

pytestmark = pytest.mark.parallel


def test_cnn_example_reaches_97_percent_and_mlflow_holds_metrics_and_the_best_checkpoint(tmp_path):
    mlflow = pytest.importorskip("mlflow")
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    started = time.monotonic()
    proc = hvdtrain("run", "-np", "2", str(REPO / "examples" / "pytorch_cnn_images.py"), "--epochs", "15",
                    "--output-dir", str(tmp_path / "out"), "--mlflow", store, "--no-progress", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    accuracy = float(re.search(r"final val_accuracy=([0-9.]+) after 15 epochs on 2 workers", proc.stdout)[1])
    print(f"CNN example: val_accuracy={accuracy:.4f} in {time.monotonic() - started:.0f}s")
    assert accuracy >= 0.97
    client = mlflow.tracking.MlflowClient(tracking_uri=store)
    [run] = client.search_runs(experiment_ids=["0"])
    assert run.data.params["world_size"] == "2" and run.data.params["epochs"] == "15"
    history = client.get_metric_history(run.info.run_id, "val_accuracy")
    assert [m.step for m in history] == list(range(1, 16))
    assert history[-1].value == pytest.approx(accuracy, abs=1e-4)
    artifacts = [a.path for a in client.list_artifacts(run.info.run_id, "checkpoints")]
    assert len(artifacts) == 1 and artifacts[0].endswith(".ckpt")
