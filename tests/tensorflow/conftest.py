"""Single-process fixtures: Horovod initialized in this process (world size 1)."""
from __future__ import annotations

import os

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


@pytest.fixture(scope="session")
def backend():
    """The TensorFlow adapter's Horovod backend, as ``init()`` returns it in a one-process job."""
    import hvdtrain.tensorflow as htf

    return htf.init()
