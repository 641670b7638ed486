"""A project made by `hvdtrain new` trains as it is, with its own `hvdtrain run -np 2`, for both frameworks."""
from __future__ import annotations

import pytest

from tests.launcher.helpers import final_accuracy, hvdtrain

pytestmark = pytest.mark.parallel


@pytest.mark.parametrize("framework", ["pytorch", "tensorflow"])
def test_scaffolded_project_trains_checkpoints_and_resumes_on_two_workers(tmp_path, framework):
    project = tmp_path / "demo"
    created = hvdtrain("new", "demo", "--framework", framework, "--directory", str(project))
    assert created.returncode == 0, created.stderr

    # The project's own launch settings (run.yaml) and hyper-parameters (config.yaml), shortened to 3 epochs.
    first = hvdtrain("run", "--config", "run.yaml", "-np", "2", "train.py", "--epochs", "3", cwd=project, timeout=300)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    accuracy = final_accuracy(first.stdout)
    assert accuracy is not None and accuracy > 0.8, first.stdout[-2000:]
    assert sorted(p.name for p in (project / "runs" / "checkpoints").glob("ckpt-*.ckpt"))
    assert len((project / "runs" / "metrics.csv").read_text().splitlines()) == 3 + 1

    resumed = hvdtrain("run", "--config", "run.yaml", "-np", "2", "train.py", "--epochs", "4", "--resume",
                       cwd=project, timeout=300)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "at epoch 3" in resumed.stdout, resumed.stdout[-2000:]


@pytest.mark.parametrize("framework", ["pytorch", "tensorflow"])
def test_scaffolded_project_rejects_a_bad_config_key_before_training(tmp_path, framework):
    project = tmp_path / "demo"
    assert hvdtrain("new", "demo", "--framework", framework, "--directory", str(project)).returncode == 0
    config = project / "config.yaml"
    config.write_text(config.read_text().replace("batch_size:", "batchsize:"))
    proc = hvdtrain("run", "-np", "2", "train.py", cwd=project, timeout=300)
    assert proc.returncode != 0
    assert "unknown key 'batchsize'; did you mean 'batch_size'?" in proc.stdout + proc.stderr
