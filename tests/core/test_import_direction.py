"""Layers import one way: core <- callbacks <- engine <- adapters <- launcher / script / cli.

Read from the source (every import statement, function-level ones too), over the whole package,
so a new module is checked the day it is added.
"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "hvdtrain"
LAYERS = {"core": 0, "callbacks": 1, "engine": 2, "torch": 3, "tensorflow": 3, "launcher": 4}
TOP_LEVEL = {"_version": 0, "datasets": 0, "__init__": 1, "script": 4, "cli": 4, "__main__": 4}
FRAMEWORKS = {"torch", "tensorflow", "keras", "horovod", "mpi4py"}
# What each layer may not import from outside the package.
FORBIDDEN = {0: FRAMEWORKS | {"yaml"}, 1: FRAMEWORKS | {"yaml"}, 2: FRAMEWORKS | {"yaml"}}


def module_name(path: Path) -> str:
    return ".".join(("hvdtrain", *path.relative_to(PACKAGE).with_suffix("").parts))


def layer_of(module: str) -> tuple[int, str] | None:
    """(layer rank, layer name) of an hvdtrain module, or None for the templates (project files)."""
    parts = module.split(".")[1:] or ["__init__"]
    if parts[0] == "templates":
        return None
    if parts[0] in LAYERS:
        return LAYERS[parts[0]], parts[0]
    return TOP_LEVEL[parts[0]], parts[0]


def imports(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in ``path``; relative imports resolved."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = module_name(path).split(".")[:-node.level]
                base = ".".join([*package, base] if base else package)
            found += [(node.lineno, _submodule(base, alias.name)) for alias in node.names]
    return found


def _submodule(base: str, name: str) -> str:
    """``from base import name``: the module imported, ``base.name`` when that is a module of the package."""
    if base.split(".")[0] != "hvdtrain":
        return base
    folder = PACKAGE.joinpath(*base.split(".")[1:], name)
    return f"{base}.{name}" if folder.is_dir() or folder.with_suffix(".py").is_file() else base


def violations(path: Path) -> list[str]:
    own = layer_of(module_name(path))
    if own is None:
        return []
    rank, name = own
    problems = []
    for line, target in imports(path):
        top = target.split(".")[0]
        where = f"{path.relative_to(PACKAGE.parent)}:{line} imports {target}"
        if top in FORBIDDEN.get(rank, set()):
            problems.append(f"{where}: layer '{name}' may not import {top}")
        if top != "hvdtrain":
            continue
        other = layer_of(target)
        if other is None:
            continue
        if other[0] > rank or (other[0] == rank and other[1] != name and rank == LAYERS["torch"]):
            problems.append(f"{where}: layer '{name}' may not import layer '{other[1]}'")
    return problems


def test_every_module_imports_only_its_own_layer_or_below():
    modules = sorted(PACKAGE.rglob("*.py"))
    assert len(modules) > 40
    problems = [p for path in modules for p in violations(path)]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize(("layer", "source", "expected"), [
    ("core", "import torch\n", "layer 'core' may not import torch"),
    ("core", "def f():\n    import yaml\n", "layer 'core' may not import yaml"),
    ("core", "from hvdtrain.callbacks.base import Callback\n", "layer 'core' may not import layer 'callbacks'"),
    ("core", "from horovod.torch import allreduce\n", "layer 'core' may not import horovod"),
    ("callbacks", "from hvdtrain.torch import Trainer\n", "layer 'callbacks' may not import layer 'torch'"),
    ("callbacks", "import hvdtrain.engine.loop\n", "layer 'callbacks' may not import layer 'engine'"),
    ("torch", "from hvdtrain.tensorflow import fit\n", "layer 'torch' may not import layer 'tensorflow'"),
    ("engine", "from hvdtrain.launcher import run\n", "layer 'engine' may not import layer 'launcher'"),
])
def test_a_wrong_import_is_named(tmp_path, monkeypatch, layer, source, expected):
    module = PACKAGE / layer / "_probe_for_test.py"
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", PACKAGE)
    module.write_text(source)
    try:
        assert any(expected in problem for problem in violations(module)), violations(module)
    finally:
        module.unlink()


BLOCK = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('torch', 'tensorflow', 'keras', 'horovod', 'yaml'):
            raise ImportError('blocked: ' + name)
sys.meta_path.insert(0, Block())
import importlib, pkgutil
for package in ('hvdtrain.core', 'hvdtrain.callbacks', 'hvdtrain.engine'):
    for module in pkgutil.iter_modules(importlib.import_module(package).__path__):
        importlib.import_module(package + '.' + module.name)
import hvdtrain, hvdtrain.datasets
print('ok')
"""


def test_core_callbacks_and_engine_import_without_frameworks_horovod_or_yaml():
    out = subprocess.run([sys.executable, "-c", BLOCK], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def import_cycles() -> list[list[str]]:
    """Every circle of imports between the package's modules (function-level imports included)."""
    graph: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        source = module_name(path).removesuffix(".__init__")
        graph[source] = {target for _line, target in imports(path)
                         if target.startswith("hvdtrain.") and target != source}
    cycles, done = [], set()

    def visit(module: str, trail: list[str]) -> None:
        if module in trail:
            cycles.append([*trail[trail.index(module):], module])
            return
        if module in done:
            return
        for target in sorted(graph.get(module, ())):
            visit(target, [*trail, module])
        done.add(module)

    for module in sorted(graph):
        visit(module, [])
    return cycles


def test_no_module_imports_itself_through_others():
    cycles = import_cycles()
    assert not cycles, "\n".join(" -> ".join(cycle) for cycle in cycles)
