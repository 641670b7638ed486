"""The CPU image, built from docker/Dockerfile.cpu on a real Docker engine, trains in one container and
across two containers whose ranks meet over the image's own sshd.

`make test-docker` runs these (they are deselected from `make test`).
"""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from tests.docker.conftest import SETUP_BUDGET, cpu_build_args
from tests.docker.helpers import REPO, BuildError, Engine, local_pip_sources
from tests.launcher.helpers import final_accuracy

pytestmark = pytest.mark.docker

EXAMPLE = "/opt/hvdtrain/examples/pytorch_digits.py"
TRAIN_TIMEOUT = 300


@pytest.mark.timeout(SETUP_BUDGET + 120)
def test_doctor_passes_inside_the_image(engine: Engine, cpu_image: str):
    doctor = engine.run_container("--network", "none", cpu_image, "hvdtrain", "doctor", "--require",
                                  "torch,tensorflow,mpi,gloo", name="hvdtrain-test-doctor", timeout=120)
    report = doctor.stdout + doctor.stderr
    assert doctor.returncode == 0, report
    assert "Problems: none" in report and "[X] PyTorch  [X] TensorFlow" in report, report
    assert "Controllers:       [X] MPI  [X] Gloo" in report, report


@pytest.mark.timeout(SETUP_BUDGET + TRAIN_TIMEOUT + 60)
def test_two_workers_train_inside_one_container(engine: Engine, cpu_image: str):
    trained = engine.run_container("--network", "none", cpu_image, "hvdtrain", "run", "-np", "2", EXAMPLE,
                                   "--epochs", "20", name="hvdtrain-test-one", timeout=TRAIN_TIMEOUT)
    output = trained.stdout + trained.stderr
    assert trained.returncode == 0, output[-5000:]
    accuracy = final_accuracy(output)
    assert "on 2 workers" in output and accuracy is not None and accuracy >= 0.95, output[-3000:]


PROBE = """
import socket
import horovod.torch as hvd
import torch

hvd.init()
total = hvd.allreduce(torch.tensor([1.0]), op=hvd.Sum, name="probe").item()
print(f"PROBE rank={hvd.rank()} size={hvd.size()} host={socket.gethostname()} sum={total:g}", flush=True)
"""


@pytest.mark.timeout(SETUP_BUDGET + TRAIN_TIMEOUT + 120)
def test_two_containers_train_over_the_image_sshd(engine: Engine, cpu_image: str, network: str, tmp_path: Path):
    key = tmp_path / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True, timeout=30)
    (tmp_path / "probe.py").write_text(PROBE)
    job = ["--network", network, "-v", f"{tmp_path}:/job:ro"]  # the same script path in both containers
    worker = engine.start(*job, "--hostname", "worker1", "--network-alias", "worker1",
                          "-e", f"SSH_AUTHORIZED_KEYS={key.with_suffix('.pub').read_text().strip()}",
                          cpu_image, "start-sshd", name=f"{network}-worker1")
    engine.run("exec", worker, "bash", "-c", "for i in $(seq 100); do ss -ltn | grep -q :2222 && exit 0; "
               "sleep 0.1; done; exit 1")
    hosts = "-H launcher:1,worker1:1"
    launcher = engine.run_container(*job, "--hostname", "launcher", "--network-alias", "launcher",
                                    "-v", f"{key}:/root/.ssh/id_ed25519:ro", cpu_image,
                                    "bash", "-c", f"hvdtrain run {hosts} /job/probe.py && "
                                    f"hvdtrain run {hosts} {EXAMPLE} --epochs 20",
                                    name=f"{network}-launcher", timeout=TRAIN_TIMEOUT)
    output = launcher.stdout + launcher.stderr
    assert launcher.returncode == 0, output[-5000:]
    probes = sorted(re.findall(r"PROBE rank=(\d) size=2 host=(\w+) sum=2", output))
    assert probes == [("0", "launcher"), ("1", "worker1")], output[-3000:]
    accuracy = final_accuracy(output)
    assert "on 2 workers" in output and accuracy is not None and accuracy >= 0.95, output[-3000:]
    addresses = engine.run("network", "inspect", "-f", "{{range .Containers}}{{.IPv4Address}} {{end}}",
                           network).stdout.split()
    assert addresses and all(address.startswith("198.18.20.") for address in addresses), addresses


@pytest.mark.timeout(SETUP_BUDGET + 900)
def test_a_failing_step_is_named_with_its_output(engine: Engine, cpu_image: str, tmp_path: Path):
    # The image's last check made to fail: the CPU build has no NCCL. Earlier steps come from the cache.
    text = (REPO / "docker" / "Dockerfile.cpu").read_text()
    broken = tmp_path / "Dockerfile.broken"
    broken.write_text(text.replace("--require torch,tensorflow,mpi,gloo", "--require torch,tensorflow,mpi,gloo,nccl"))
    with local_pip_sources() as (pip_args, secrets), pytest.raises(BuildError) as failed:
        engine.build(broken, "hvdtrain:broken", {**cpu_build_args(), **pip_args}, secrets, tmp_path / "build.log")
    message = str(failed.value)
    step = re.search(r"step \[(\d+)/(\d+)\] RUN pip install --no-deps --no-build-isolation \. ", message)
    assert step and message.startswith("Dockerfile.broken: "), message[:2000]
    output = message.split("its output:", 1)[1]
    assert "required `nccl` is not available to Horovod here" in output, message[-2000:]
