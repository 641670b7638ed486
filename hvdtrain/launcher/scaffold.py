"""`hvdtrain new`: scaffold a team project from the templates shipped in the package."""
from __future__ import annotations

import os
import re
from importlib import resources
from pathlib import Path

from hvdtrain.launcher.cluster import ClusterShape, k8s_files, sbatch_resources
from hvdtrain.launcher.errors import ScaffoldError

__all__ = ["FRAMEWORKS", "ScaffoldError", "create_project"]

FRAMEWORKS = {"pytorch": "PyTorch", "tensorflow": "TensorFlow/Keras"}
_NAME = re.compile(r"^[a-z][a-z0-9-]{0,62}$")
_EXECUTABLE = {"slurm/train.sbatch"}


def create_project(name: str, framework: str, directory: str | os.PathLike | None = None,
                   shape: ClusterShape | None = None) -> Path:
    """Create project ``name`` for ``framework`` in ``directory`` (default: ``./name``).

    Args:
        name: project name: lower-case letters, digits and dashes (it names the image and the job).
        framework: "pytorch" or "tensorflow".
        directory: where to create it; must not exist or be empty.
        shape: the cluster its Slurm script and MPIJob ask for (default: 1 node, 2 CPU workers).

    Returns:
        The project directory.

    Raises:
        ScaffoldError: a bad name, an unknown framework or a non-empty target directory.
    """
    if framework not in FRAMEWORKS:
        raise ScaffoldError(f"unknown framework {framework!r}; choose one of: {', '.join(FRAMEWORKS)}")
    if not _NAME.match(name):
        raise ScaffoldError(f"invalid project name {name!r}: use lower-case letters, digits and dashes, "
                            "starting with a letter (it becomes a Docker image and a Kubernetes job name)")
    target = Path(directory) if directory is not None else Path(name)
    if target.exists() and any(target.iterdir()):
        raise ScaffoldError(f"{target} already exists and is not empty; choose another name or directory "
                            "(nothing was overwritten)")
    shape = shape or ClusterShape()
    values = {"project_name": name, "framework": framework, "framework_title": FRAMEWORKS[framework],
              "cluster_shape": shape.describe(), "sbatch_resources": sbatch_resources(shape)}
    files = {relative: _render(text, values)
             for relative, text in {**_template_files("common"), **_template_files(framework)}.items()}
    for relative, text in {**files, **k8s_files(name, shape)}.items():
        path = target / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        if relative in _EXECUTABLE:
            path.chmod(0o755)
    return target


def _template_files(kind: str) -> dict[str, str]:
    root = resources.files("hvdtrain.templates") / kind
    return {rel: (root / rel).read_text() for rel in _walk(root)}


def _walk(root, prefix: str = "") -> list[str]:
    found = []
    for entry in root.iterdir():
        rel = f"{prefix}{entry.name}"
        if entry.is_dir():
            found += _walk(entry, rel + "/")
        elif entry.name != "__init__.py" and not entry.name.endswith(".pyc"):
            found.append(rel)
    return found


def _render(text: str, values: dict[str, str]) -> str:
    for key, value in values.items():
        text = text.replace("{{" + key + "}}", value)
    return text
