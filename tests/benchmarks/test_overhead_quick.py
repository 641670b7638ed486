"""The overhead benchmark end to end in quick mode: every selected loop ran and the report says so.

It checks that each loop reported a positive step time and that the goals are marked, never how fast.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.parallel


def test_quick_overhead_run_times_every_loop_and_marks_the_goals(tmp_path):
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    proc = subprocess.run([sys.executable, "-m", "benchmarks.overhead", "--quick", "--cases", "np=2", "--samples",
                           "320", "--output-dir", str(tmp_path)], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    data = json.loads((tmp_path / "overhead.json").read_text())
    records = {r["key"]: r for r in data["records"]}
    assert set(records) == {"hand", "hvdtrain", "hand-ddp", "lightning", "accelerate"}
    for key in ("hand", "hvdtrain", "hand-ddp"):
        assert records[key]["status"] == "ok", (key, records[key])
        assert records[key]["us_per_step"] > 0
    assert records["hvdtrain"]["overhead"] is not None
    for key in ("lightning", "accelerate"):  # installed by make bench-setup only
        assert records[key]["status"] == "ok" or "requirements-bench.txt" in records[key]["status"], records[key]
    report = (tmp_path / "performance-overhead.md").read_text()
    assert "overhead of the Trainer over a hand-written Horovod loop, np=2 ≤ 25%: **" in report
