"""Build hvdtrain's images on the private engine of ``scripts/docker_local.sh`` and run containers on it.

The image is built as a user builds it (``docker build -f docker/Dockerfile.cpu .``), with build arguments
only: the local base image, and this machine's pip sources (its wheel folders and file:// indexes,
served over HTTP on 127.0.0.1 for the build; its CA bundle as the ``pip_cert`` secret).
"""
from __future__ import annotations

import ast
import http.server
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from urllib.parse import unquote, urlparse

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "docker_local.sh"
BASE_IMAGE = "hvdtrain-base:bookworm-python3.11"
NETWORK_SUBNET = "198.18.20.0/24"  # inside 198.18.0.0/15, the test range of the multi-host tests
BUILD_TIMEOUT = 3600
COMMAND_TIMEOUT = 300
TEST_LABEL = "hvdtrain.test=1"  # on every container and network the tests make
PIP_SOURCES_PORT = int(os.environ.get("HVDTRAIN_PIP_SOURCES_PORT", "47391"))


class BuildError(AssertionError):
    """An image build failed; the message names the Dockerfile step that failed and ends with its output."""


def script(command: str, timeout: float = COMMAND_TIMEOUT) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), command], capture_output=True, text=True, timeout=timeout)


@dataclass
class Engine:
    """The dockerd of ``scripts/docker_local.sh``, through the client that came with it."""

    host: str
    cli: str

    @classmethod
    def read(cls) -> Engine:
        values = dict(line.split("=", 1) for line in script("env").stdout.split())
        return cls(values["DOCKER_HOST"], values["DOCKER_CLI"])

    def env(self) -> dict[str, str]:
        return {**os.environ, "DOCKER_HOST": self.host, "DOCKER_BUILDKIT": "1"}

    def run(self, *args: str, timeout: float = COMMAND_TIMEOUT, check: bool = True) -> subprocess.CompletedProcess:
        """``docker ARGS``; with ``check``, AssertionError with its output when it fails."""
        proc = subprocess.run([self.cli, *args], capture_output=True, text=True, timeout=timeout, env=self.env())
        assert not check or proc.returncode == 0, (
            f"docker {' '.join(args)[:300]} failed (exit {proc.returncode}):\n"
            f"{proc.stdout[-3000:]}{proc.stderr[-5000:]}")
        return proc

    def build(self, dockerfile: Path, tag: str, build_args: dict[str, str], secrets: dict[str, str],
              log: Path, context: Path = REPO) -> float:
        """``docker build`` with BuildKit's plain progress written to ``log``; its seconds, or BuildError."""
        argv = [self.cli, "build", "--progress", "plain", "--network", "host", "-f", str(dockerfile), "-t", tag]
        for name, value in build_args.items():
            argv += ["--build-arg", f"{name}={value}"]
        for name, path in secrets.items():
            argv += ["--secret", f"id={name},src={path}"]
        began = time.monotonic()
        with log.open("w") as out:
            proc = subprocess.run([*argv, str(context)], stdout=out, stderr=subprocess.STDOUT, timeout=BUILD_TIMEOUT,
                                  env=self.env())
        if proc.returncode != 0:
            raise BuildError(describe_build_failure(log.read_text(errors="replace"), dockerfile))
        return time.monotonic() - began

    def start(self, *args: str, name: str) -> str:
        """``docker run -d --name NAME ARGS``; the container is removed by ``remove_all``."""
        self.run("run", "-d", "--name", name, "--label", TEST_LABEL, *args)
        return name

    def run_container(self, *args: str, name: str, timeout: float) -> subprocess.CompletedProcess:
        """``docker run --rm --name NAME ARGS`` to its end; removed also when the client is killed on a timeout."""
        try:
            return self.run("run", "--rm", "--name", name, "--label", TEST_LABEL, *args, timeout=timeout, check=False)
        finally:
            self.run("rm", "-f", "-v", name, check=False)

    def create_network(self, name: str, subnet: str = NETWORK_SUBNET) -> str:
        self.run("network", "create", "--driver", "bridge", "--subnet", subnet, "--label", TEST_LABEL, name)
        return name

    def remove_all(self) -> None:
        """Remove the containers and networks of the tests: this session's and any an earlier one left
        (a killed session's network would hold the test subnet)."""
        left = self.run("ps", "-aq", "--filter", f"label={TEST_LABEL}", check=False).stdout.split()
        if left:
            self.run("rm", "-f", "-v", *left, check=False)
        networks = self.run("network", "ls", "-q", "--filter", f"label={TEST_LABEL}", check=False).stdout.split()
        if networks:
            self.run("network", "rm", *networks, check=False)


_STEP = re.compile(r"^#(\d+) \[(?:[\w.-]+ +)? *(\d+/\d+)\] (.*)$", re.M)


def describe_build_failure(log: str, dockerfile: Path) -> str:
    """Which step of ``dockerfile`` failed (BuildKit's ``#N [k/n] INSTRUCTION``), with that step's output."""
    steps = {number: (position, text) for number, position, text in _STEP.findall(log)}
    failed = re.findall(r"^#(\d+) ERROR: (.*)$", log, re.M)
    summary = re.findall(r"^(?:error: |ERROR: )?failed to solve(?: with frontend \S+)?: (.*)$", log, re.M | re.I)
    if failed and failed[-1][0] in steps:
        number, error = failed[-1]
        position, text = steps[number]
        output = "\n".join(line for line in log.splitlines() if line.startswith(f"#{number} "))[-4000:]
        return (f"{dockerfile.name}: step [{position}] {' '.join(text.split())[:240]} failed ({error[-60:]})\n"
                f"its output:\n{output}")
    reason = summary[-1] if summary else "see the build's output"
    return f"{dockerfile.name}: the build failed outside its numbered steps: {reason}\n{log[-3000:]}"


# -- this machine's pip sources, for the build ------------------------------------------------------------


def pip_config() -> dict[str, str]:
    """pip's install settings here, as ``{"find-links": ...}``, in pip's precedence: PIP_* variables, then
    the ``install`` section, then ``global`` (from ``pip config list``, which prints values with repr)."""
    out = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True,
                         timeout=60).stdout
    by_section: dict[str, dict[str, str]] = {":env:": {}, "install": {}, "global": {}}
    for line in out.splitlines():
        key, _, value = line.partition("=")
        section, _, name = key.rpartition(".")
        section = ":env:" if section.startswith(":env:") else section
        if section in by_section:
            by_section[section][name] = " ".join(str(ast.literal_eval(value)).split())
    return {**by_section["global"], **by_section["install"], **by_section[":env:"]}


class _Directories(http.server.SimpleHTTPRequestHandler):
    """Serves ``/<n>/...`` from the n-th folder of ``roots``; read-only, quiet."""

    def __init__(self, *args, roots: list[Path], **kwargs) -> None:
        self.roots = roots
        super().__init__(*args, **kwargs)

    def translate_path(self, path: str) -> str:
        index, _, rest = unquote(urlparse(path).path).lstrip("/").partition("/")
        if not index.isdigit() or int(index) >= len(self.roots):
            return "/nonexistent"
        return str(self.roots[int(index)] / rest)

    def log_message(self, *args) -> None:
        pass


@contextmanager
def local_pip_sources() -> Iterator[tuple[dict[str, str], dict[str, str]]]:
    """(build args, secrets) that make pip inside the build resolve packages as pip here does.

    Local folders (find-links, file:// indexes) are served on 127.0.0.1 while the build runs; remote
    indexes are passed on; pip's CA bundle becomes the ``pip_cert`` secret.
    """
    settings = pip_config()
    roots: list[Path] = []

    def served(location: str) -> str:
        # An index is served from its parent folder: its pages link to files with relative paths (../../files/).
        path = Path(unquote(urlparse(location).path) if location.startswith("file:") else location)
        roots.append(path.parent if location.startswith("file:") else path)
        tail = f"{path.name}/" if location.startswith("file:") else ""
        return f"http://127.0.0.1:{{port}}/{len(roots) - 1}/{tail}"

    def translate(value: str) -> str:
        return " ".join(served(item) if item.startswith(("file:", "/")) else item for item in value.split())

    args = {name: translate(settings[key]) for name, key in
            [("PIP_INDEX_URL", "index-url"), ("PIP_EXTRA_INDEX_URL", "extra-index-url"),
             ("PIP_FIND_LINKS", "find-links")] if settings.get(key)}
    passed_on = [("PIP_TRUSTED_HOST", "trusted-host"), ("PIP_NO_INDEX", "no-index")]
    args.update({name: settings[key] for name, key in passed_on if settings.get(key)})
    secrets = {"pip_cert": settings["cert"]} if settings.get("cert") else {}
    # A fixed port: the addresses are build arguments, and a changed one would rebuild the Python layers.
    server = http.server.ThreadingHTTPServer(("127.0.0.1", PIP_SOURCES_PORT), partial(_Directories, roots=roots))
    thread = threading.Thread(target=server.serve_forever, name="pip-sources", daemon=True)
    thread.start()
    try:
        port = server.server_address[1]
        yield {name: value.replace("{port}", str(port)) for name, value in args.items()}, secrets
    finally:
        server.shutdown()
        server.server_close()
