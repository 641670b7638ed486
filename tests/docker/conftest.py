"""The private Docker engine, the CPU image built on it, and a network inside 198.18.0.0/15."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.docker.helpers import BASE_IMAGE, REPO, Engine, local_pip_sources, script

CPU_IMAGE = "hvdtrain:cpu"
# pytest-timeout counts the session fixtures in the first test that uses them: engine, base and an uncached
# build take about 10 minutes here (docs/docker.md); every test's bound leaves room for them.
SETUP_BUDGET = 2400
BRIDGE_NETFILTER = Path("/proc/sys/net/bridge/bridge-nf-call-iptables")


@pytest.fixture(scope="session")
def engine() -> Iterator[Engine]:
    """A running dockerd of ``scripts/docker_local.sh`` with the local base image; stopped afterwards if
    this session started it. Fails, never skips, when it cannot start."""
    started_here = script("status").returncode != 0
    if started_here:
        up = script("up", timeout=600)
        if up.returncode != 0:
            script("down", timeout=120)
            pytest.fail(f"the Docker engine did not start (scripts/docker_local.sh up, exit {up.returncode}):\n"
                        f"{up.stdout[-3000:]}\n{up.stderr[-3000:]}", pytrace=False)
    docker = Engine.read()
    docker.remove_all()  # what a killed session left
    try:
        base = script("base", timeout=900)
        if base.returncode != 0:
            pytest.fail(f"the base image {BASE_IMAGE} was not made:\n{base.stdout}\n{base.stderr[-3000:]}",
                        pytrace=False)
        yield docker
    finally:
        docker.remove_all()
        docker.run("image", "prune", "-f", check=False)  # earlier builds' untagged images; the cache stays
        if started_here:
            down = script("down", timeout=120)
            assert down.returncode == 0, down.stdout + down.stderr


def cpu_build_args() -> dict[str, str]:
    """The build arguments that differ from a user's build here: the local base, pip's own sources."""
    return {"BASE_IMAGE": BASE_IMAGE, "TORCH_INDEX_URL": ""}


@pytest.fixture(scope="session")
def cpu_image(engine: Engine, tmp_path_factory: pytest.TempPathFactory) -> str:
    """``docker/Dockerfile.cpu`` built as it is, with build arguments only (unchanged layers are cached)."""
    log = tmp_path_factory.mktemp("build") / "cpu.log"
    with local_pip_sources() as (pip_args, secrets):
        seconds = engine.build(REPO / "docker" / "Dockerfile.cpu", CPU_IMAGE, {**cpu_build_args(), **pip_args},
                               secrets, log)
    cached = log.read_text().count(" CACHED")
    print(f"built {CPU_IMAGE} in {seconds:.0f} s ({cached} steps cached); log: {log}")
    return CPU_IMAGE


@pytest.fixture(scope="session")
def network(engine: Engine) -> Iterator[str]:
    """A bridge network on 198.18.20.0/24 that containers reach each other on.

    Bridged traffic must not go through this host's iptables (a FORWARD policy of DROP left by another
    daemon would drop it silently), so bridge-nf-call-iptables is 0 while it exists, then restored.
    """
    name = engine.create_network("hvdtrain-test")  # may load br_netfilter, so the setting is read after it
    before = BRIDGE_NETFILTER.read_text().strip() if BRIDGE_NETFILTER.exists() else None
    if before not in (None, "0"):
        BRIDGE_NETFILTER.write_text("0")
    try:
        yield name
    finally:
        if before not in (None, "0"):
            BRIDGE_NETFILTER.write_text(before)
