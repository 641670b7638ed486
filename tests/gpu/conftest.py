"""The GPU suite: every test here is marked ``gpu`` and fails (never skips) where there is no usable GPU."""
from __future__ import annotations

import pytest


def pytest_collection_modifyitems(items):
    for item in items:
        if "/tests/gpu/" in str(item.fspath):
            item.add_marker(pytest.mark.gpu)


@pytest.fixture(scope="session", autouse=True)
def _a_gpu_and_nccl():
    import torch

    assert torch.cuda.is_available(), "the GPU suite needs CUDA: run `make test-gpu` on a machine with an NVIDIA GPU"
    import horovod.torch as hvd

    assert hvd.nccl_built(), "Horovod lacks NCCL: re-run `make setup` (or scripts/build_horovod.sh) on this machine"
