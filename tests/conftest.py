import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


@pytest.fixture(scope="session", autouse=True)
def _horovod_is_installed():
    """Fail (never skip) when Horovod or horovodrun is missing: a skip would hide a broken install. (mpirun is
    checked by the tests that launch with it, in ``tests.launch``: the GPU suite runs without it.)"""
    import horovod  # noqa: F401

    launcher = Path(sys.executable).parent / "horovodrun"
    assert launcher.exists(), f"{launcher} is missing; run `make setup`"
