"""Run one rendered container as a local process: its command, its environment with the
volume mount paths moved under a temporary directory, loopback-only addresses."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from tests.manifests.rendering import container_env, containers, render


@dataclass
class LocalPod:
    command: list[str]
    env: dict[str, str]
    #: container mount path -> local directory standing in for the volume
    mounts: dict[str, Path]
    #: names of variables filled from Secrets or the downward API (need a value)
    runtime: set[str] = field(default_factory=set)

    def volume(self, mount_path: str) -> Path:
        return self.mounts[mount_path]


def local_pod(target: str, container: str, tmp: Path) -> LocalPod:
    resources = render(target)
    c = next(c for c in containers(resources) if c.spec["name"] == container)
    mounts = {m["mountPath"]: tmp / m["name"] for m in c.spec.get("volumeMounts", [])}
    for path in mounts.values():
        path.mkdir(parents=True)
    env: dict[str, str] = {}
    runtime: set[str] = set()
    for name, value in container_env(c, resources).items():
        if not isinstance(value, str):
            runtime.add(name)
            continue
        for mount, local in sorted(mounts.items(), key=lambda m: -len(m[0])):
            if value == mount or value.startswith(mount + "/"):
                value = str(local) + value[len(mount) :]
                break
        env[name] = value
    return LocalPod(list(c.spec["command"]), env, mounts, runtime)


def start(pod: LocalPod, log: Path) -> subprocess.Popen[bytes]:
    missing = pod.runtime - set(pod.env)
    assert not missing, f"no run-time value for {sorted(missing)}"
    prefixes = tuple({name.split("_", 1)[0] + "_" for name in pod.env})
    base = {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}
    base["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{base.get('PATH', '')}"
    return subprocess.Popen(
        pod.command, env=base | pod.env, stdout=log.open("wb"), stderr=subprocess.STDOUT
    )


def http_status(url: str, token: str | None = None) -> int:
    request = urllib.request.Request(url)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=2) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


def wait_http(proc: subprocess.Popen[bytes], url: str, log: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while http_status(url) != 200:
        assert proc.poll() is None, log.read_text()
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.2)


def terminate(proc: subprocess.Popen[bytes], grace: float = 25) -> int:
    """SIGTERM as the kubelet sends it; the exit code (killed after ``grace``: -9)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode
