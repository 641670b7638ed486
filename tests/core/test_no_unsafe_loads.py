"""No checkpoint load path unpickles: the only unpickling of a file is the opt-in converter.

Read from the source of every module, so a new load path is checked the day it is added.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "hvdtrain"
EXAMPLES = PACKAGE.parent / "examples"
UNSAFE = re.compile(r"pickle\.loads?\(|weights_only\s*=\s*False|allow_pickle\s*=\s*True|marshal\.loads?\(|"
                    r"cloudpickle\.loads?\(|dill\.loads?\(|\bUnpickler\(|yaml\.load\(|yaml\.unsafe_load\(")
TORCH_LOAD = re.compile(r"torch\.load\((?![^\n]*weights_only\s*=\s*True)")
NP_LOAD = re.compile(r"np\.load\((?![^\n]*allow_pickle\s*=\s*False)")
# The explicit, documented exceptions, with why each is not a checkpoint load path.
ALLOWED = {
    "launcher/convert.py": "hvdtrain convert-checkpoint: unpickles a legacy file the user confirmed they trust",
    "core/backend.py": "SerialBackend.broadcast_object copies an object this process just pickled; no file",
}


def unsafe_lines(source: str) -> list[tuple[int, str]]:
    """(line number, line) of each call that could unpickle data."""
    return [(number, line.strip()) for number, line in enumerate(source.splitlines(), 1)
            if not line.lstrip().startswith("#")
            and (UNSAFE.search(line) or TORCH_LOAD.search(line) or NP_LOAD.search(line))]


def test_no_module_or_example_but_the_converter_unpickles():
    modules = [p for p in sorted(PACKAGE.rglob("*.py")) if p.relative_to(PACKAGE).as_posix() not in ALLOWED]
    modules += sorted(EXAMPLES.rglob("*.py"))
    assert len(modules) > 40
    problems = [f"{path.relative_to(PACKAGE.parent)}:{number}: {line}"
                for path in modules for number, line in unsafe_lines(path.read_text())]
    assert not problems, "unpickling outside the converter:\n" + "\n".join(problems)


def test_the_allowed_exceptions_still_exist_and_are_the_only_ones_in_their_files():
    converter = unsafe_lines((PACKAGE / "launcher/convert.py").read_text())
    assert [line for _, line in converter] == [
        'return torch.load(io.BytesIO(payload), map_location="cpu", weights_only=False)  # opt-in: user trusts it',
        "return pickle.loads(payload)  # opt-in: user trusts it"]
    assert [line for _, line in unsafe_lines((PACKAGE / "core/backend.py").read_text())] == [
        "return pickle.loads(pickle.dumps(obj))"]


@pytest.mark.parametrize("line", [
    "state = pickle.loads(data)", "torch.load(buffer, map_location='cpu')", "torch.load(f, weights_only=False)",
    "arrays = np.load(f)", "np.load(f, allow_pickle=True)", "yaml.load(text)", "pickle.load(f)",
])
def test_each_unsafe_call_is_caught(line):
    assert unsafe_lines(line) == [(1, line)]


@pytest.mark.parametrize("line", [
    "torch.load(buffer, map_location='cpu', weights_only=True)", "np.load(f, allow_pickle=False)",
    "pickle.dumps(obj)", "yaml.safe_load(text)",
])
def test_safe_calls_pass(line):
    assert unsafe_lines(line) == []
