"""``hvdtrain doctor``: the problem rules (pure) and the report on the real installation.

The extension-load checks run against the real Horovod: once as installed, once from a copy
whose metadata records another torch version, once from a copy with a broken torch extension.
"""
from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
from pathlib import Path

import horovod
import pytest

from hvdtrain.launcher.checks import (
    build_key_problems,
    environment_problems,
    extension_problems,
    parse_build_key,
    parse_requirements,
    pipeline_problems,
    requirement_problems,
    version_problems,
)
from hvdtrain.launcher.doctor import BUILD_KEY_FILE, collect, exception_text, format_report, recorded_build_key
from tests.launcher.helpers import REPO, explain, hvdtrain

INSTALLED = {"torch": "2.13.0+cpu", "tensorflow": "2.21.0"}


def test_version_mismatch_names_both_versions_and_the_rebuild():
    problems = version_problems({"pytorch": "2.1.0", "tensorflow": "2.21.0", "dummy": "none"}, INSTALLED)
    assert len(problems) == 1
    assert problems[0].severity == "error"
    assert problems[0].message.startswith("Horovod was built against torch 2.1.0 but torch 2.13.0+cpu is installed")
    assert problems[0].fix == ("re-run `make setup` (or scripts/build_horovod.sh) "
                               "to rebuild Horovod against torch 2.13.0+cpu")


def test_matching_missing_or_uninstalled_frameworks_are_not_mismatches():
    assert version_problems({"pytorch": "2.13.0+cpu", "tensorflow": "2.21.0"}, INSTALLED) == []
    assert version_problems({"tensorflow": "2.20.0"}, {"torch": "2.13.0", "tensorflow": None}) == []
    assert version_problems(None, INSTALLED) == []
    tf = version_problems({"tensorflow": "2.20.0"}, INSTALLED)
    assert "rebuild Horovod against tensorflow 2.21.0" in tf[0].fix


KEY = "horovod-0.28.1_torch-2.13.0+cpu_tf-2.21.0_py-3.11_gpu-none"


def test_build_key_of_the_build_script_is_compared_with_the_environment():
    assert parse_build_key(KEY) == {"horovod": "0.28.1", "torch": "2.13.0+cpu", "tensorflow": "2.21.0",
                                    "python": "3.11", "gpu": "none"}
    same = {"horovod": "0.28.1", "torch": "2.13.0+cpu", "tensorflow": "2.21.0", "python": "3.11"}
    assert build_key_problems(KEY, same) == []
    assert build_key_problems(None, same) == []
    upgraded = build_key_problems(KEY, {**same, "torch": "2.14.0+cpu", "python": "3.12"})
    built_by = "Horovod here was built by scripts/build_horovod.sh for"
    assert [p.message for p in upgraded] == [
        f"{built_by} torch 2.13.0+cpu, but torch 2.14.0+cpu is installed now",
        f"{built_by} python 3.11, but python 3.12 is installed now"]
    assert upgraded[0].fix == ("re-run `make setup` (or scripts/build_horovod.sh) "
                               "to rebuild Horovod against torch 2.14.0+cpu")
    assert build_key_problems("garbage", same)[0].severity == "warning"


def test_build_key_file_is_read_from_the_environment_prefix(tmp_path):
    assert recorded_build_key(str(tmp_path)) is None
    (tmp_path / BUILD_KEY_FILE).write_text(KEY + "\n")
    assert recorded_build_key(str(tmp_path)) == KEY


def test_extension_failures_say_why():
    probes = {"torch": {"loads": False, "error": "ImportError: Extension horovod.torch has not been built: x"},
              "tensorflow": {"loads": False, "error": "ImportError: undefined symbol: _ZN3tsl"}}
    problems = extension_problems(probes, INSTALLED)
    assert [p.message for p in problems] == [
        "Horovod was built without PyTorch support",
        "horovod.tensorflow fails to load: ImportError: undefined symbol: _ZN3tsl"]
    assert problems[1].fix.endswith("to rebuild Horovod against tensorflow 2.21.0")
    assert extension_problems({"torch": {"loads": True}}, INSTALLED) == []


def test_environment_warnings():
    root = environment_problems("/usr/bin/mpirun", "/venv/bin/horovodrun", True, {})
    assert [p.severity for p in root] == ["warning"]
    assert "`hvdtrain run` adds --allow-run-as-root for you" in root[0].fix
    allowed = {"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}
    assert environment_problems("/usr/bin/mpirun", "/h", True, allowed) == []
    assert environment_problems("/usr/bin/mpirun", "/h", False, {}) == []
    missing = environment_problems(None, None, True, {})
    assert ["`mpirun` is not on PATH" in p.message for p in missing] == [True, False]


def test_requirements_parse_and_check():
    assert parse_requirements("torch, TF,mpi") == ["torch", "tensorflow", "mpi"]
    with pytest.raises(ValueError, match=r"unknown name.*cuda; choose from torch, tensorflow, mpi, gloo, nccl"):
        parse_requirements("torch,cuda")
    report = {"horovod": {"frameworks": {"torch": True}, "controllers": {"mpi": True, "gloo": True},
                          "tensor_operations": {"nccl": False}}, "launchers": {"mpirun": None}}
    problems = requirement_problems(["torch", "tensorflow", "mpi", "gloo", "nccl"], report)
    assert [p.message.split("`")[1] for p in problems] == ["tensorflow", "mpi", "nccl"]


def test_exception_text_keeps_the_whole_exception_message():
    stderr = ("Traceback (most recent call last):\n  File \"x\", line 1\n    import y\n"
              "horovod.common.exceptions.HorovodVersionMismatchError: Framework pytorch installed with version 1\n"
              "             This can result in unexpected behavior\n")
    assert exception_text(stderr, 1).startswith("horovod.common.exceptions.HorovodVersionMismatchError: Framework")
    assert exception_text(stderr, 1).endswith("This can result in unexpected behavior")
    assert exception_text("", -11) == "the interpreter died from signal 11 while loading it"


@pytest.fixture(scope="module")
def report():
    return collect(["torch", "tensorflow", "mpi", "gloo"])


def test_real_installation_loads_both_extensions(report):
    assert report["ok"], format_report(report)
    assert report["versions"]["horovod"] == horovod.__version__
    import torch

    assert report["versions"]["torch"] == torch.__version__  # what Horovod compares with, "+cpu" included
    assert report["versions"]["torch"].startswith(importlib.metadata.version("torch").split("+")[0])
    assert report["horovod"]["frameworks"] == {"torch": True, "tensorflow": True}
    assert report["horovod"]["controllers"] == {"mpi": True, "gloo": True}
    ops = report["horovod"]["tensor_operations"]
    assert ops["mpi"] and ops["gloo"]
    assert report["horovod"]["built_against"]["pytorch"] == report["versions"]["torch"]
    assert report["horovod"]["build_key"] == recorded_build_key()
    assert report["versions"]["openmpi"].startswith("Open MPI ")
    text = format_report(report)
    assert "[X] PyTorch  [X] TensorFlow" in text and "[X] MPI  [X] Gloo" in text
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    assert report["gpus"]["count"] == gpus
    assert ("GPUs        none visible to torch" in text) == (gpus == 0)
    assert report["pipeline"] == {"loads": True, "error": None, "mpi4py_threads": True, "horovod_mpi": True,
                                  "horovod_threads": True}
    assert "Pipelines   ready: MPI with thread support" in text


def test_what_stops_a_pipeline_is_named_with_the_fix():
    ready = {"loads": True, "mpi4py_threads": True, "horovod_mpi": True, "horovod_threads": True}
    assert pipeline_problems(ready) == []
    cases = [(None, "mpi4py is not installed"), ({"loads": False, "error": "boom"}, "could not start"),
             ({**ready, "horovod_mpi": False}, "built without MPI"),
             ({**ready, "mpi4py_threads": False}, "no MPI_THREAD_MULTIPLE")]
    for probe, message in cases:
        [problem] = pipeline_problems(probe)
        assert problem.severity == "warning" and message in problem.message and "mpi4py" in problem.fix


def test_doctor_json_structure_and_require_nccl_fails_on_a_cpu_build():
    proc = hvdtrain("doctor", "--json")
    assert proc.returncode == 0, explain(proc)
    report = json.loads(proc.stdout)
    assert set(report) == {"versions", "python_executable", "launchers", "horovod", "gpus", "pipeline", "problems",
                           "ok"}
    assert set(report["gpus"]) >= {"count", "names"}
    assert set(report["versions"]) == {"python", "hvdtrain", "horovod", "torch", "tensorflow", "openmpi", "mpi4py"}
    assert set(report["horovod"]) >= {"installed", "built_against", "build_key", "extensions", "frameworks",
                                      "controllers", "tensor_operations"}
    assert set(report["horovod"]["tensor_operations"]) == {"nccl", "ddl", "ccl", "mpi", "gloo"}
    for name, probe in report["horovod"]["extensions"].items():
        gpus = {"gpus"} if name == "torch" else set()
        assert set(probe) == {"loads", "error", "built", "warnings", "framework_version"} | gpus
    for problem in report["problems"]:
        assert set(problem) == {"severity", "message", "fix"}
    if not report["horovod"]["tensor_operations"]["nccl"]:
        proc = hvdtrain("doctor", "--require", "nccl")
        assert proc.returncode == 1, explain(proc)
        assert "ERROR: required `nccl` is not available to Horovod here" in proc.stdout


def _horovod_copy(tmp_path: Path) -> Path:
    """A tree of symlinks to the installed Horovod package under tmp_path/horovod (real metadata copied)."""
    source = Path(horovod.__file__).parent
    target = tmp_path / "horovod"
    shutil.copytree(source, target, copy_function=os.symlink, ignore=shutil.ignore_patterns("__pycache__"))
    (target / "metadata.json").unlink()
    shutil.copy(source / "metadata.json", target / "metadata.json")
    return target


def _doctor_with(package_root: Path):
    proc = hvdtrain("doctor", "--json", env={"PYTHONPATH": f"{package_root}{os.pathsep}{REPO}"})
    return proc, json.loads(proc.stdout)


def test_real_horovod_recording_another_torch_version_is_reported(tmp_path):
    copy = _horovod_copy(tmp_path)
    metadata = json.loads((copy / "metadata.json").read_text())
    metadata["pytorch"] = "2.1.0+cpu"
    (copy / "metadata.json").write_text(json.dumps(metadata))
    proc, report = _doctor_with(tmp_path)
    assert proc.returncode == 1, explain(proc)
    assert report["horovod"]["built_against"]["pytorch"] == "2.1.0+cpu"
    torch_version = report["versions"]["torch"]
    assert {"severity": "error",
            "message": f"Horovod was built against torch 2.1.0+cpu but torch {torch_version} is installed; "
                       "its PyTorch extension may fail to load or crash at run time",
            "fix": f"re-run `make setup` (or scripts/build_horovod.sh) to rebuild Horovod against torch "
                   f"{torch_version}"} in report["problems"]
    # Horovod itself only warns when the library loads; the doctor keeps that warning.
    assert any("installed with version 2.1.0+cpu" in w for w in report["horovod"]["extensions"]["torch"]["warnings"])


def test_a_torch_extension_that_does_not_load_is_an_error_not_a_crash(tmp_path):
    copy = _horovod_copy(tmp_path)
    library = next((copy / "torch").glob("mpi_lib_v2*.so"))
    library.unlink()
    library.write_bytes(b"not a shared library")
    proc, report = _doctor_with(tmp_path)
    assert proc.returncode == 1, explain(proc)
    torch_probe = report["horovod"]["extensions"]["torch"]
    assert torch_probe["loads"] is False
    assert "ImportError" in torch_probe["error"]
    assert report["horovod"]["frameworks"] == {"torch": False, "tensorflow": True}
    assert any(p["message"].startswith("horovod.torch fails to load: ") and p["severity"] == "error"
               for p in report["problems"])
    assert "NOT OK" in format_report(report)


def test_gpus_without_nccl_warn_with_the_rebuild():
    from hvdtrain.launcher.checks import gpu_problems

    problems = gpu_problems({"count": 8}, {"nccl": False, "mpi": True})
    assert [p.severity for p in problems] == ["warning"]
    assert problems[0].message.startswith("this machine has 8 GPUs but Horovod was built without NCCL")
    assert "HOROVOD_GPU_OPERATIONS=NCCL" in problems[0].fix
    assert gpu_problems({"count": 8}, {"nccl": True}) == []
    assert gpu_problems({"count": 0}, {"nccl": False}) == []
