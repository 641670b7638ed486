"""The MLflow logger's missing-dependency error names the extra that installs it."""
from __future__ import annotations

import sys

import pytest

from hvdtrain.callbacks import MLflowLogger
from hvdtrain.core.options import TrainingOptions


def test_without_mlflow_the_error_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # what an environment without mlflow imports
    with pytest.raises(ImportError, match=r"pip install 'hvdtrain\[mlflow\]'"):
        MLflowLogger("sqlite:///x.db")


def test_the_option_adds_the_logger():
    pytest.importorskip("mlflow")
    from hvdtrain.callbacks import default_callbacks

    found = [c for c in default_callbacks(TrainingOptions(mlflow_uri="sqlite:///x.db")) if isinstance(c, MLflowLogger)]
    assert len(found) == 1 and found[0].tracking_uri == "sqlite:///x.db"
