"""The cluster a project is made for, and the job files ``hvdtrain new`` writes from it.

One ``ClusterShape`` (nodes, GPUs per node, workers per node) sizes both the Slurm batch script
(``slurm/train.sbatch``) and the Kubeflow ``MPIJob`` (``k8s/mpijob.yaml`` with the
``PersistentVolumeClaim`` of ``k8s/pvc.yaml`` for its checkpoints).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import yaml

from hvdtrain.launcher.errors import ScaffoldError

CPU_WORKERS_PER_NODE = 2
MPIJOB_API_VERSION = "kubeflow.org/v2beta1"
RUNS_MOUNT = "/workspace/runs"  # the checkpoint volume in the pods; train.py gets --output-dir here
GPU_RESOURCE = "nvidia.com/gpu"
# Workers run sshd for the launcher's mpirun; the hvdtrain images' sshd and ssh client use port 2222.
WORKER_COMMAND = ["bash", "-c", "ssh-keygen -A >/dev/null && mkdir -p /run/sshd && exec /usr/sbin/sshd -De"]


@dataclass(frozen=True)
class ClusterShape:
    """How many nodes, and per node: GPUs (0 on CPU clusters) and worker processes.

    Attributes:
        nodes: machines the job spans.
        gpus_per_node: GPUs each node gives the job; one worker per GPU. 0 for CPU clusters.
        workers_per_node: workers per node; default one per GPU, or ``CPU_WORKERS_PER_NODE`` without GPUs.
    """

    nodes: int = 1
    gpus_per_node: int = 0
    workers_per_node: int | None = None

    def __post_init__(self) -> None:
        if self.nodes < 1:
            raise ScaffoldError(f"--nodes must be at least 1, got {self.nodes}")
        if self.gpus_per_node < 0:
            raise ScaffoldError(f"--gpus-per-node must be 0 (CPU cluster) or more, got {self.gpus_per_node}")
        if self.workers_per_node is not None and self.workers_per_node < 1:
            raise ScaffoldError(f"--workers-per-node must be at least 1, got {self.workers_per_node}")
        if self.gpus_per_node and self.workers_per_node not in (None, self.gpus_per_node):
            raise ScaffoldError(f"--workers-per-node {self.workers_per_node} with --gpus-per-node "
                                f"{self.gpus_per_node}: Horovod runs one worker per GPU; drop --workers-per-node")

    @property
    def tasks_per_node(self) -> int:
        """Worker processes on each node."""
        if self.workers_per_node is not None:
            return self.workers_per_node
        return self.gpus_per_node or CPU_WORKERS_PER_NODE

    @property
    def np(self) -> int:
        """Workers in the whole job."""
        return self.nodes * self.tasks_per_node

    def describe(self) -> str:
        """``2 nodes x 4 GPUs, one worker per GPU (8 workers)`` or ``1 node x 2 CPU workers (2 workers)``."""
        nodes = f"{self.nodes} node{'s' if self.nodes > 1 else ''}"
        if self.gpus_per_node:
            return f"{nodes} x {self.gpus_per_node} GPUs, one worker per GPU ({self.np} workers)"
        return f"{nodes} x {self.tasks_per_node} CPU workers ({self.np} workers)"


def sbatch_resources(shape: ClusterShape) -> str:
    """The ``#SBATCH`` lines that ask Slurm for ``shape``: nodes, tasks per node, GPUs when there are any."""
    lines = [f"#SBATCH --nodes={shape.nodes}", f"#SBATCH --ntasks-per-node={shape.tasks_per_node}"]
    if shape.gpus_per_node:
        lines.append(f"#SBATCH --gpus-per-node={shape.gpus_per_node}")
    lines.append("##SBATCH --cpus-per-task=8   # cores per worker (data loading, thread pools): "
                 "remove one # to ask for them")
    return "\n".join(lines)


def mpijob(name: str, shape: ClusterShape) -> dict[str, Any]:
    """The Kubeflow ``MPIJob`` (v2beta1) that trains project ``name`` on ``shape``.

    One launcher pod runs ``hvdtrain run -np N`` (the operator hands mpirun the workers' hostfile);
    one worker pod per node runs sshd. Checkpoints go to the ``PersistentVolumeClaim`` of
    ``pvc(name)``, so a restarted job resumes (``--resume``) where it stopped.
    """
    worker_resources: dict[str, Any] = (
        {"limits": {GPU_RESOURCE: shape.gpus_per_node}} if shape.gpus_per_node
        else {"requests": {"cpu": shape.tasks_per_node}})
    launcher_command = ["hvdtrain", "run", "-np", str(shape.np), "--config", "run.yaml", "train.py", "--resume",
                        "--output-dir", RUNS_MOUNT]
    return {
        "apiVersion": MPIJOB_API_VERSION,
        "kind": "MPIJob",
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {
            "slotsPerWorker": shape.tasks_per_node,
            "mpiImplementation": "OpenMPI",
            "runPolicy": {"cleanPodPolicy": "Running", "backoffLimit": 3},
            "mpiReplicaSpecs": {
                "Launcher": {"replicas": 1, "template": {"spec": {"containers": [
                    {"name": "launcher", "image": f"{name}:latest", "command": launcher_command}]}}},
                "Worker": {"replicas": shape.nodes, "template": {"spec": {
                    "containers": [{"name": "worker", "image": f"{name}:latest", "command": WORKER_COMMAND,
                                    "resources": worker_resources,
                                    "volumeMounts": [{"name": "runs", "mountPath": RUNS_MOUNT}]}],
                    "volumes": [{"name": "runs", "persistentVolumeClaim": {"claimName": runs_claim(name)}}]}}},
            },
        },
    }


def runs_claim(name: str) -> str:
    """The name of the ``PersistentVolumeClaim`` that holds project ``name``'s checkpoints and logs."""
    return f"{name}-runs"


def pvc(name: str, size: str = "10Gi") -> dict[str, Any]:
    """The ``PersistentVolumeClaim`` the MPIJob's worker pods mount for checkpoints (rank 0 writes them)."""
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": runs_claim(name), "labels": {"app": name}},
        "spec": {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": size}}},
    }


def to_yaml(manifest: dict[str, Any], header: str) -> str:
    """``manifest`` as YAML (keys in the order built), after ``header`` as ``#`` comment lines."""
    comments = "".join(f"# {line}\n" if line else "#\n" for line in header.splitlines())
    return comments + yaml.safe_dump(manifest, sort_keys=False, default_flow_style=False, width=1000)


def k8s_files(name: str, shape: ClusterShape) -> dict[str, str]:
    """``k8s/mpijob.yaml`` and ``k8s/pvc.yaml`` of project ``name``, as text."""
    apply = "kubectl apply -f k8s/pvc.yaml -f k8s/mpijob.yaml   (push the image of `make docker-build` first)"
    return {
        "k8s/mpijob.yaml": to_yaml(mpijob(name, shape), f"Kubeflow MPI Operator ({MPIJOB_API_VERSION}) job: "
                                   f"{name} on {shape.describe()}.\n{apply}\nCheckpoints go to the "
                                   f"PersistentVolumeClaim {runs_claim(name)} (k8s/pvc.yaml); --resume "
                                   "continues a restarted job from the newest one."),
        "k8s/pvc.yaml": to_yaml(pvc(name), f"Storage for {name}'s checkpoints and logs, mounted at {RUNS_MOUNT} "
                                "in every worker pod.\nReadWriteMany: all worker pods mount it (one per node); "
                                "rank 0 writes the checkpoints."),
    }
