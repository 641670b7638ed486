"""``hvdtrain run --elastic`` for real: two workers on this machine, each slot a host of its own."""
from __future__ import annotations

import re

import pytest

from tests.launcher.helpers import explain, hvdtrain, write_script

pytestmark = pytest.mark.parallel

# No training: every worker reports once from inside hvd.elastic.run, with a committed state.
ELASTIC_WORKER = r"""
import os
import horovod.torch as hvd

hvd.init()
state = hvd.elastic.TorchState(reported=False)


@hvd.elastic.run
def report(state):
    print(f"ELASTIC rank={hvd.rank()} size={hvd.size()} host={os.environ['HOROVOD_HOSTNAME']} "
          f"slots={os.environ.get('HVDTRAIN_LOCAL_SLOT_HOSTS')}", flush=True)
    state.reported = True
    state.commit()


report(state)
"""


@pytest.mark.timeout(120)
def test_two_local_workers_run_under_distinct_slot_names(tmp_path):
    script = write_script(tmp_path, ELASTIC_WORKER, "elastic_worker.py")
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    proc = hvdtrain("run", "--elastic", "--min-np", "1", "--max-np", "2", "-np", "2", script.name, cwd=tmp_path,
                    timeout=110, env={"HOROVOD_GLOO_TIMEOUT_SECONDS": "30", "TMPDIR": str(scratch)})
    assert proc.returncode == 0, explain(proc)
    reports = sorted(re.findall(r"ELASTIC rank=(\d) size=(\d) host=(\S+) slots=(\S+)", proc.stdout))
    assert [(rank, size) for rank, size, _host, _slots in reports] == [("0", "2"), ("1", "2")], explain(proc)
    assert {host for _rank, _size, host, _slots in reports} == {"127.0.0.1", "127.0.0.01"}, explain(proc)
    assert {slots for *_, slots in reports} == {"127.0.0.1,127.0.0.01"}, explain(proc)
    assert not list(scratch.glob("hvdtrain-elastic-*")), "the discovery script was left behind"


# Trains forever on whoever is left, unless the job ends: rank 1 raises at step 5.
RAISING_WORKER = r"""
import time
import horovod.torch as hvd
from hvdtrain.torch.backend import HorovodBackend

hvd.init()
backend = HorovodBackend()
state = hvd.elastic.TorchState(step=0)


@hvd.elastic.run
def train(state):
    while True:
        backend.allreduce_sum([1.0])
        state.step += 1
        if state.step == 5 and hvd.rank() == 1:
            raise ValueError("bad batch on rank 1")
        state.commit()
        time.sleep(0.1)


train(state)
"""


@pytest.mark.timeout(150)
def test_an_exception_in_a_worker_ends_the_elastic_job_promptly(tmp_path):
    script = write_script(tmp_path, RAISING_WORKER, "raising_worker.py")
    proc = hvdtrain("run", "--elastic", "--min-np", "1", "--max-np", "2", "-np", "2", script.name, cwd=tmp_path,
                    timeout=120, env={"HOROVOD_GLOO_TIMEOUT_SECONDS": "30", "HVDTRAIN_FAILURE_GRACE": "5"})
    assert proc.returncode == 1, explain(proc)
    assert re.search(r"hvdtrain run: rank 1 \(host \S+, pid \d+\) failed first: ValueError: bad batch on rank 1",
                     proc.stderr), explain(proc)
