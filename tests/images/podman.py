"""podman for the image tests: the build script (docker/images.py) loaded as a module, a
runner that uses its environment (runc, no default ulimits), and a record of every
object a test creates so teardown removes exactly those, by name."""

from __future__ import annotations

import base64
import importlib.util
import json
import subprocess
import sys
from dataclasses import dataclass, field
from functools import cache
from types import ModuleType
from typing import Any

import yaml

from tests.manifests.rendering import REPO


@cache
def images_module() -> ModuleType:
    """docker/images.py (not a package: it is a script users run)."""
    spec = importlib.util.spec_from_file_location("edgecloud_images", REPO / "docker/images.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def podman(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        ["podman", *args],
        env=images_module().podman_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)} failed:\n{proc.stderr}{proc.stdout}")
    return proc


@dataclass
class Created:
    """Everything a test made in podman, removed in reverse by :meth:`teardown`. Every
    name starts with ``prefix``; ``kube play`` also makes a volume per ConfigMap and
    Secret volume (named after them), which teardown finds by that prefix."""

    prefix: str
    pods: list[str] = field(default_factory=list)
    volumes: list[str] = field(default_factory=list)
    secrets: list[str] = field(default_factory=list)

    def secret(self, name: str, data: dict[str, bytes], *, as_env: bool) -> None:
        """A Secret as podman 4.3's ``kube play`` reads it: env references
        (``secretKeyRef``) want a JSON object of base64 values, secret volumes a
        Kubernetes Secret document whose ``data`` holds the plain text; the two formats
        exclude each other."""
        if as_env:
            text = json.dumps({k: base64.b64encode(v).decode() for k, v in data.items()})
        else:
            # Its volume code writes ``data`` values as they stand (no base64 decoding).
            doc = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}}
            text = yaml.safe_dump(doc | {"data": {k: v.decode() for k, v in data.items()}})
        self.secrets.append(name)
        proc = subprocess.run(
            ["podman", "secret", "create", name, "-"],
            input=text,
            env=images_module().podman_env(),
            capture_output=True,
            text=True,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr

    def leftovers(self) -> list[str]:
        """Pods, volumes and Secrets named with the prefix that still exist."""
        out = []
        for what in (("pod", "ps"), ("volume", "ls"), ("secret", "ls")):
            names = podman(*what, "--format", "{{.Name}}", check=False).stdout.split()
            out += [f"{what[0]} {n}" for n in names if n.startswith(self.prefix)]
        return out

    def teardown(self) -> list[str]:
        problems = []
        for pod in reversed(self.pods):
            proc = podman("pod", "rm", "-f", "-t", "3", pod, check=False, timeout=60)
            if proc.returncode != 0 and "no pod with name" not in proc.stderr:
                problems.append(proc.stderr.strip())
        listed = podman("volume", "ls", "--format", "{{.Name}}", check=False).stdout.split()
        for volume in dict.fromkeys([*self.volumes, *listed]):
            if volume.startswith(self.prefix):
                podman("volume", "rm", "-f", volume, check=False)
        for secret in self.secrets:
            podman("secret", "rm", secret, check=False)
        return problems


def logs(container: str) -> str:
    proc = podman("logs", "--tail", "60", container, check=False)
    return f"--- {container}\n{proc.stdout}{proc.stderr}"


def exec_in(container: str, *argv: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return podman("exec", container, *argv, check=False, timeout=timeout)


def inspect(container: str) -> dict[str, Any]:
    return json.loads(podman("inspect", container).stdout)[0]
