"""Every MPIJob `hvdtrain new` writes is valid against the MPI Operator's real CRD schema, and sized right.

The schema is the `v2beta1` `openAPIV3Schema` of the vendored CRD (data/README.md names its source).
Kubernetes rejects unknown fields under strict field validation (kubectl's default); the CRD leaves
that implicit, so objects that list their properties get ``additionalProperties: false`` here.
What the schema cannot say is checked by ``problems``: replica counts against ``-np``, GPUs against
the shape, checkpoints on a PersistentVolumeClaim.
"""
from __future__ import annotations

import copy
import hashlib
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from hvdtrain.cli import main
from hvdtrain.launcher.cluster import GPU_RESOURCE, ClusterShape

CRD = Path(__file__).parent / "data" / "kubeflow.org_mpijobs.yaml"
CRD_SHA256 = "78b0131f931fcc8d99f6ce0407281f41b62527e443ec691d26d9634b390ad3bb"
VERSION = "v2beta1"
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
SHAPES = [ClusterShape(), ClusterShape(1, 0, 3), ClusterShape(4, 0, 1), ClusterShape(2, 4), ClusterShape(3, 1),
          ClusterShape(8, 8)]


def strict(schema: Any) -> Any:
    """``schema`` with unknown fields rejected wherever it lists the known ones (as strict validation does)."""
    if isinstance(schema, list):
        return [strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    result = {key: strict(value) for key, value in schema.items()}
    if "properties" in schema and "additionalProperties" not in schema and not schema.get(
            "x-kubernetes-preserve-unknown-fields"):
        result["additionalProperties"] = False
    return result


@pytest.fixture(scope="module")
def crd() -> dict[str, Any]:
    return yaml.load(CRD.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


@pytest.fixture(scope="module")
def validator(crd) -> jsonschema.Draft7Validator:
    version = next(item for item in crd["spec"]["versions"] if item["name"] == VERSION)
    schema = strict(version["schema"]["openAPIV3Schema"])
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


def schema_errors(validator: jsonschema.Draft7Validator, manifest: dict[str, Any]) -> list[str]:
    """Every schema violation as ``path: message``."""
    return [f"{'.'.join(map(str, error.absolute_path)) or '<root>'}: {error.message}"
            for error in validator.iter_errors(manifest)]


def generate(tmp_path: Path, shape: ClusterShape, framework: str = "pytorch") -> tuple[dict, dict]:
    """``hvdtrain new`` for ``shape``; its k8s/mpijob.yaml and k8s/pvc.yaml, parsed."""
    project = tmp_path / f"p{shape.nodes}-{shape.gpus_per_node}-{shape.tasks_per_node}-{framework}"
    args = ["new", "team-a", "--framework", framework, "--directory", str(project), "--nodes", str(shape.nodes),
            "--gpus-per-node", str(shape.gpus_per_node)]
    if shape.workers_per_node is not None:
        args += ["--workers-per-node", str(shape.workers_per_node)]
    assert main(args) == 0
    return tuple(yaml.safe_load((project / "k8s" / name).read_text()) for name in ("mpijob.yaml", "pvc.yaml"))


def problems(manifest: dict[str, Any], pvc: dict[str, Any], shape: ClusterShape) -> list[str]:
    """What the schema cannot express: sizes against the shape, and checkpoints on the PVC."""
    found = []
    if not DNS_LABEL.match(manifest["metadata"]["name"]):
        found.append(f"metadata.name {manifest['metadata']['name']!r} is not a DNS label")
    specs = manifest["spec"]["mpiReplicaSpecs"]
    if sorted(specs) != ["Launcher", "Worker"]:
        return [*found, f"mpiReplicaSpecs has {sorted(specs)}, not Launcher and Worker"]
    launcher, worker = (specs[role]["template"]["spec"]["containers"][0] for role in ("Launcher", "Worker"))
    command = launcher["command"]
    np = int(command[command.index("-np") + 1]) if "-np" in command else None
    slots = manifest["spec"].get("slotsPerWorker", 1)
    if specs["Launcher"].get("replicas") != 1:
        found.append(f"Launcher replicas {specs['Launcher'].get('replicas')}, not 1")
    if specs["Worker"]["replicas"] != shape.nodes or np != specs["Worker"]["replicas"] * slots:
        found.append(f"-np {np} is not Worker replicas {specs['Worker']['replicas']} x slotsPerWorker {slots} "
                     f"for {shape.describe()}")
    if np != shape.np:
        found.append(f"-np {np}, not the shape's {shape.np}")
    gpus = worker.get("resources", {}).get("limits", {}).get(GPU_RESOURCE, 0)
    if gpus != shape.gpus_per_node:
        found.append(f"workers ask for {gpus} GPU(s), the shape has {shape.gpus_per_node} per node")
    if launcher.get("resources", {}).get("limits", {}).get(GPU_RESOURCE):
        found.append("the launcher asks for GPUs; it only runs mpirun")
    found += checkpoint_problems(specs, worker, command, pvc)
    return found


def checkpoint_problems(specs: dict, worker: dict, command: list[str], pvc: dict) -> list[str]:
    """Checkpoints (train.py's --output-dir) must land on the project's PersistentVolumeClaim."""
    found = []
    volumes = {volume["name"]: volume for role in specs.values()
               for volume in role["template"]["spec"].get("volumes", [])}
    found += [f"volume {name!r} is an emptyDir: checkpoints would die with the pod"
              for name, volume in volumes.items() if "emptyDir" in volume]
    output_dir = command[command.index("--output-dir") + 1] if "--output-dir" in command else None
    mounts = {mount["mountPath"]: mount["name"] for mount in worker.get("volumeMounts", [])}
    volume = volumes.get(mounts.get(output_dir, ""), {})
    if "persistentVolumeClaim" not in volume:
        found.append(f"--output-dir {output_dir} is not a PersistentVolumeClaim mounted in the workers")
    elif volume["persistentVolumeClaim"]["claimName"] != pvc["metadata"]["name"] or pvc["kind"] != (
            "PersistentVolumeClaim"):
        found.append(f"the workers mount claim {volume['persistentVolumeClaim']['claimName']!r}, "
                     f"k8s/pvc.yaml defines {pvc['kind']} {pvc['metadata']['name']!r}")
    if "--resume" not in command:
        found.append("the launcher does not pass --resume: a restarted job would start over")
    return found


def test_vendored_crd_is_the_upstream_v2beta1_file(crd):
    assert hashlib.sha256(CRD.read_bytes()).hexdigest() == CRD_SHA256, "data/README.md: re-vendor unchanged"
    assert (crd["spec"]["group"], crd["spec"]["names"]["kind"]) == ("kubeflow.org", "MPIJob")
    assert VERSION in [item["name"] for item in crd["spec"]["versions"]]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda shape: shape.describe())
@pytest.mark.parametrize("framework", ["pytorch", "tensorflow"])
def test_every_generated_mpijob_is_valid_and_sized_for_its_shape(tmp_path, crd, validator, shape, framework):
    manifest, pvc = generate(tmp_path, shape, framework)
    assert manifest["apiVersion"] == f"{crd['spec']['group']}/{VERSION}" and manifest["kind"] == "MPIJob"
    assert schema_errors(validator, manifest) == []
    assert problems(manifest, pvc, shape) == []
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]


@pytest.mark.parametrize("path, value, expected", [
    (["spec", "slotPerWorker"], 2, "spec: Additional properties are not allowed ('slotPerWorker' was unexpected)"),
    (["spec", "mpiReplicaSpecs", "Worker", "replicas"], "two", "spec.mpiReplicaSpecs.Worker.replicas: 'two' is not"),
    (["spec", "mpiImplementation"], "OpenMPI4", "spec.mpiImplementation: 'OpenMPI4' is not one of"),
    (["spec", "mpiReplicaSpecs", "Worker", "template", "spec", "containers", 0, "resources", "limit"], {},
     "resources: Additional properties are not allowed ('limit' was unexpected)"),
])
def test_a_wrong_field_fails_validation(tmp_path, validator, path, value, expected):
    manifest, _ = generate(tmp_path, ClusterShape(2, 4))
    broken = copy.deepcopy(manifest)
    target = broken
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    errors = schema_errors(validator, broken)
    assert any(expected in error for error in errors), errors


def test_the_checks_beyond_the_schema_catch_wrong_sizes_and_volumes(tmp_path, validator):
    shape = ClusterShape(2, 4)
    manifest, pvc = generate(tmp_path, shape)
    fewer = copy.deepcopy(manifest)
    fewer["spec"]["mpiReplicaSpecs"]["Worker"]["replicas"] = 1
    no_gpu = copy.deepcopy(manifest)
    del no_gpu["spec"]["mpiReplicaSpecs"]["Worker"]["template"]["spec"]["containers"][0]["resources"]
    scratch = copy.deepcopy(manifest)
    scratch["spec"]["mpiReplicaSpecs"]["Worker"]["template"]["spec"]["volumes"] = [{"name": "runs", "emptyDir": {}}]
    for broken, expected in [(fewer, "-np 8 is not Worker replicas 1 x slotsPerWorker 4"),
                             (no_gpu, "workers ask for 0 GPU(s), the shape has 4 per node"),
                             (scratch, "volume 'runs' is an emptyDir")]:
        assert schema_errors(validator, broken) == []  # valid as far as the schema can tell
        assert any(expected in problem for problem in problems(broken, pvc, shape)), problems(broken, pvc, shape)
