"""compose.yaml cannot drift from the code: every service command is a real CLI with real
flags that parse, the images are the ones docker/images.py builds, every service runs on
a read-only root and publishes ports on the host's loopback only."""

from __future__ import annotations

import contextlib
import importlib
import json
import queue
import shutil
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Callable

import pytest
import yaml

from bus.broker import BrokerUrl
from cloud_gateway.client import GatewayClient
from tests.conftest import free_port
from tests.images.podman import images_module, podman
from tests.manifests.brokers import Client
from tests.manifests.rendering import REPO
from tests.manifests.test_drift import PROCESSES, flag_problems, parser_for

COMPOSE = yaml.safe_load((REPO / "compose.yaml").read_text())
SERVICES = COMPOSE["services"]


def test_the_stack_is_the_demos() -> None:
    commands = [s.get("command", [""])[0] for s in SERVICES.values()]
    assert commands.count("edge-agent") == 2
    assert {"offload-server", "cloud-gateway"} <= set(commands)
    assert "mosquitto" in SERVICES


@pytest.mark.parametrize("name", sorted(n for n, s in SERVICES.items()
                                        if s.get("command", [""])[0] in PROCESSES))  # fmt: skip
def test_commands_parse(name: str) -> None:
    words = [str(w) for w in SERVICES[name]["command"]]
    process = PROCESSES[words[0]]
    parser, rest = parser_for(process, words[1:])
    assert flag_problems(name, parser, rest) == []
    try:
        importlib.import_module(process.cli).build_parser().parse_args(words[1:])
    except SystemExit as exc:
        raise AssertionError(f"compose.yaml {name}: {' '.join(words)} does not parse") from exc


def test_images_are_the_built_ones() -> None:
    images = images_module()
    built = {tag for image in images.IMAGES for tag in image.tags}
    used = {s["image"] for s in SERVICES.values()}
    assert used <= built, used - built
    for service in SERVICES.values():
        if "build" in service:
            assert (REPO / service["build"]["dockerfile"]).is_file()


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_read_only_root_and_loopback_ports(name: str) -> None:
    service = SERVICES[name]
    assert service.get("read_only") is True, f"{name}: root filesystem must be read-only"
    for port in service.get("ports", []):
        assert str(port).startswith("127.0.0.1:"), f"{name}: {port} is published beyond loopback"
    for volume in service.get("volumes", []):
        source = volume.split(":")[0]
        if source.startswith("./"):
            assert (REPO / source).exists(), f"{name}: {source} does not exist"
        else:
            assert source in COMPOSE["volumes"], f"{name}: volume {source} is not declared"


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_the_stack_runs_with_podman_compose(built_images: list[dict[str, object]]) -> None:
    """``podman-compose up`` on free loopback ports: both agents answer readings published
    from the host and appear in the gateway's fleet; ``down`` and the project's volumes
    and network are removed by name afterwards."""
    exe = shutil.which("podman-compose")
    assert exe, "podman-compose is required (apt-get install podman-compose; .ci/run does)"
    project = f"ecc{uuid.uuid4().hex[:6]}"
    ports = {k: free_port() for k in ("MQTT", "GATEWAY", "EDGE1", "EDGE2")}
    env = images_module().podman_env() | {f"EDGECLOUD_{k}_PORT": str(v) for k, v in ports.items()}

    def compose(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([exe, "-p", project, *args], cwd=REPO, env=env, text=True,
                              capture_output=True, timeout=300, check=False)  # fmt: skip

    try:
        up = compose("up", "-d")
        assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
        for n in (1, 2):
            url = f"http://127.0.0.1:{ports[f'EDGE{n}']}/readyz"
            _wait_http(url, 90, lambda: compose("logs").stdout[-4000:])
        viewer = Client(BrokerUrl.parse(f"mqtt://127.0.0.1:{ports['MQTT']}"), f"{project}-v")
        try:
            viewer.subscribe("results/#")
            rows = [[0.1 * (i % 7), 0.2, 9.8, 0.01 * i, 0.0, 0.0] for i in range(100)]
            for site in ("site-1", "site-2"):
                body = {"ts": time.time(), "seq": 100, "values": rows}
                viewer.publish(f"sensors/{site}/watch1/imu", json.dumps(body).encode())
            agents = set()
            deadline = time.monotonic() + 60
            while len(agents) < 2 and time.monotonic() < deadline:
                with contextlib.suppress(queue.Empty):
                    _, payload, _ = viewer.expect(timeout=1)
                    agents.add(json.loads(payload)["agent"])
            assert agents == {"edge-1", "edge-2"}, compose("logs").stdout[-4000:]
        finally:
            viewer.close()
        tokens = podman("exec", f"{project}_cloud-gateway_1", "cat", "/var/lib/edgecloud/tokens")
        admin = next(line.split()[1] for line in tokens.stdout.splitlines() if line[:6] == "admin ")
        gateway = GatewayClient(f"http://127.0.0.1:{ports['GATEWAY']}", admin)
        assert {a["agent_id"] for a in gateway.get("/api/v1/fleet")} == {"edge-1", "edge-2"}
    finally:
        down = compose("down")
        for volume in ("state", "mosquitto"):
            podman("volume", "rm", "-f", f"{project}_{volume}", check=False)
        podman("network", "rm", "-f", f"{project}_default", check=False)
        assert down.returncode == 0, down.stderr[-2000:]
        left = podman("ps", "-a", "--format", "{{.Names}}").stdout.split()
        left += podman("volume", "ls", "--format", "{{.Name}}").stdout.split()
        assert not [n for n in left if n.startswith(project)], left


def _wait_http(url: str, timeout: float, logs: Callable[[], str]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"{url} did not answer\n{logs()}")
