"""`make test-gpu` on a machine like the lent GPU machine: no TensorFlow, no jsonschema, no mpirun on PATH.

Its pytest command (read from the Makefile) must collect the GPU suite there, and nothing it cannot import.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys

from tests.launch import REPO


def make_recipe(target: str) -> str:
    text = (REPO / "Makefile").read_text()
    found = re.search(rf"^{re.escape(target)}:.*\n\t(.+)$", text, re.MULTILINE)
    assert found, f"the Makefile has no {target} target"
    return found[1]


def test_make_test_gpu_collects_its_suite_without_tensorflow_jsonschema_or_mpirun(tmp_path):
    missing = tmp_path / "missing"
    missing.mkdir()
    for module in ("tensorflow", "keras", "jsonschema"):  # importing any of them fails, as where it is not installed
        (missing / f"{module}.py").write_text(f"raise ImportError('no module named {module} on this machine')\n")
    recipe = make_recipe("test-gpu").replace("$(PY)", sys.executable).split()
    env = {**os.environ, "PYTHONPATH": f"{missing}{os.pathsep}{REPO}", "PATH": str(tmp_path)}  # no mpirun
    proc = subprocess.run([*recipe, "--collect-only", "-q", "-p", "no:cacheprovider"], capture_output=True,
                          text=True, cwd=REPO, env=env, timeout=180)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    collected = [line for line in proc.stdout.splitlines() if "::" in line]
    assert collected and all(line.startswith("tests/gpu/") for line in collected), proc.stdout[-3000:]
