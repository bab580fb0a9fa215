"""The ``cloud-gateway:0.1.0-postgres`` image (manifests/cloud-postgres) runs two gateway
replicas on a real PostgreSQL server: one leads, the other takes over when the leader's
container is killed, and a bundle uploaded through one is served by the other (shared
database and blob directory). Host networking on 127.0.0.1, free ports."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from models import signing
from tests.cloud_gateway.postgres import postgres_server
from tests.conftest import free_port
from tests.images.podman import logs, podman

IMAGE = "ghcr.io/edgecloud/cloud-gateway:0.1.0-postgres"
UID = 10001  # the images' user
ADMIN = "img-admin-token"


def _readyz(port: int) -> dict[str, Any] | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=3) as resp:
            return dict(json.loads(resp.read()))
    except (OSError, ValueError):
        return None


def _wait(pred: Any, timeout_s: float, what: str, names: list[str]) -> None:
    deadline = time.monotonic() + timeout_s
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not within {timeout_s:g} s\n" + "".join(map(logs, names)))
        time.sleep(0.2)


@pytest.mark.timeout(300)
def test_two_gateway_containers_share_postgres_and_hand_over_the_lead(
    built_images: list[dict[str, object]], mosquitto: Any, tmp_path: Path
) -> None:
    from models.recipes.build import build_model

    assert shutil.which("podman"), "podman is required (.ci/run installs it)"
    shared = tmp_path / "shared"
    (shared / "blobs").mkdir(parents=True)
    key = tmp_path / "keys" / "dev.key"
    signing.ensure_key(key)
    (shared / "trusted").mkdir()
    shutil.copy(signing.public_key_path(key), shared / "trusted" / "dev.pub")
    signing.ensure_key(shared / "desired.key")
    (shared / "tokens").write_text(f"admin {ADMIN}\n")
    for path in [shared, *shared.rglob("*")]:
        os.chown(path, UID, UID)
    bundle = build_model("motion-edge", 1, tmp_path / "bundles", key)

    prefix = f"edgecloud-test-pg-{secrets.token_hex(3)}"
    names: list[str] = []
    ports = [free_port(), free_port()]
    with postgres_server() as database:
        try:
            for i, port in enumerate(ports):
                name = f"{prefix}-{i}"
                names.append(name)
                podman(
                    "run", "-d", "--name", name, "--network", "host", "--read-only",
                    "-v", f"{shared}:/shared",
                    "-e", f"GATEWAY_DATABASE_URL={database}",
                    IMAGE, "cloud-gateway", "serve", "--host", "127.0.0.1",
                    "--port", str(port), "--blob-dir", "/shared/blobs",
                    "--desired-signing-key", "/shared/desired.key",
                    "--trusted-keys", "/shared/trusted", "--tokens-file", "/shared/tokens",
                    "--broker", mosquitto.url, "--mqtt-share-group", "gateways",
                    "--tick-s", "0.2",
                )  # fmt: skip
                _wait(lambda p=port: (_readyz(p) or {}).get("ready"), 60, f"{name} ready", names)
            first, second = (_readyz(p) or {} for p in ports)
            assert first["database"] == second["database"] == "postgresql"
            assert (first["leader"], second["leader"]) == (True, False)

            request = urllib.request.Request(
                f"http://127.0.0.1:{ports[1]}/api/v1/models",
                data=bundle.read_bytes(),
                method="POST",
                headers={"Authorization": f"Bearer {ADMIN}"},
            )
            with urllib.request.urlopen(request, timeout=60) as resp:
                assert resp.status == 201
            url = f"http://127.0.0.1:{ports[0]}/api/v1/models/motion-edge/versions/1/bundle"
            download = urllib.request.Request(url, headers={"Authorization": f"Bearer {ADMIN}"})
            with urllib.request.urlopen(download, timeout=60) as resp:
                assert resp.read() == bundle.read_bytes()

            podman("kill", "-s", "KILL", names[0])
            _wait(
                lambda: (_readyz(ports[1]) or {}).get("leader"), 15, "the lead handed over", names
            )
        finally:
            for name in names:
                podman("rm", "-f", "-t", "2", name, check=False)
