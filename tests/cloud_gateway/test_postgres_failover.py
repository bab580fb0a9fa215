"""Two ``cloud-gateway serve`` processes on one real PostgreSQL server (issue 15 part 4).

Both serve the API and split the heartbeats (a shared subscription); one leads the
rollout engine. A canary started on the follower is driven by the leader; the leader is
SIGKILLed after wave 2 went out, the follower takes the lead, and the rollout completes:
every wave issued exactly once, every agent updated exactly once, none without a verdict.

The agents are lite agents (simulators/lite_agent.py: real MQTT sessions, real signature
and sequence checks, real bundle downloads, no inference). Both replicas publish bundle
URLs under one ``--public-url``, as they would behind a Kubernetes Service; here the
surviving replica's address stands in for the Service.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cloud_gateway.client import GatewayClient
from models import signing
from simulators.fleet_bench import MODEL, build_bundles
from simulators.lite_agent import LiteConfig, LiteFleet
from simulators.procs import Managed, ProcessSet
from tests.cloud_gateway.postgres import postgres_server
from tests.conftest import free_port

ADMIN, AGENT = "pg-admin-token", "pg-agent-token"
AGENTS = 30


@pytest.fixture(scope="module")
def postgres() -> Iterator[str]:
    with postgres_server() as url:
        yield url


def _get(url: str, timeout: float = 5.0) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


async def _until(pred: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        if await asyncio.to_thread(pred):
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout_s:g} s")
        await asyncio.sleep(0.1)


def _ready(url: str) -> bool:
    try:
        return _get(f"{url}/readyz")[0] == 200
    except OSError:
        return False


def _leads(url: str) -> bool:
    try:
        return bool(_get(f"{url}/readyz")[1].get("leader"))
    except OSError:
        return False


def _replica(
    procs: ProcessSet, name: str, port: int, public: str, work: Path, database: str, **paths: Path
) -> Managed:
    return procs.spawn(
        name,
        [
            sys.executable,
            "-m",
            "cloud_gateway",
            "serve",
            "--port",
            str(port),
            "--public-url",
            public,
            "--database-url",
            database,
            "--blob-dir",
            str(work / "blobs"),  # shared, as a ReadWriteMany volume would be
            "--desired-signing-key",
            str(paths["key"]),  # shared, as a Secret would be
            "--broker",
            paths["broker"].read_text(),
            "--topic-prefix",
            paths["prefix"].read_text(),
            "--mqtt-share-group",
            "gateways",
            "--trusted-keys",
            str(paths["trusted"]),
            "--tokens-file",
            str(paths["tokens"]),
            "--heartbeat-timeout-s",
            "4",
            "--tick-s",
            "0.2",
        ],
    )


def test_a_rollout_survives_the_leader_killed_mid_wave(
    postgres: str, mosquitto: Any, topic_prefix: str, tmp_path: Path
) -> None:
    from bus.topics import Topics

    bundles, trusted = build_bundles(tmp_path)
    key = tmp_path / "shared" / "desired.key"
    signing.ensure_key(key)
    tokens = tmp_path / "tokens"
    tokens.write_text(f"admin {ADMIN}\nagent {AGENT}\n")
    (tmp_path / "broker").write_text(mosquitto.url)
    (tmp_path / "prefix").write_text(topic_prefix)
    paths = {
        "key": key,
        "trusted": trusted,
        "tokens": tokens,
        "broker": tmp_path / "broker",
        "prefix": tmp_path / "prefix",
    }
    port_a, port_b = free_port(), free_port()
    url_a, url_b = f"http://127.0.0.1:{port_a}", f"http://127.0.0.1:{port_b}"
    procs = ProcessSet(tmp_path / "logs")

    async def scenario() -> None:
        a = _replica(procs, "gateway-a", port_a, url_b, tmp_path, postgres, **paths)
        await _until(lambda: _ready(url_a) and _leads(url_a), 30, "replica A ready and leading")
        _replica(procs, "gateway-b", port_b, url_b, tmp_path, postgres, **paths)
        await _until(lambda: _ready(url_b), 30, "replica B ready")
        assert not _leads(url_b), "two leaders"
        # Uploads through the follower land in the shared registry and blob store.
        client_b = GatewayClient(url_b, ADMIN)
        for v in (1, 2):
            await asyncio.to_thread(client_b.push, bundles[v])
        models = GatewayClient(url_a, ADMIN).get("/api/v1/models")
        assert {m["name"]: m["versions"] for m in models} == {MODEL: [1, 2]}

        fleet = LiteFleet(
            "127.0.0.1",
            mosquitto.port,
            AGENTS,
            gateway_url=url_b,
            gateway_keys=signing.load_trusted_keys(signing.public_key_path(key)),
            token=AGENT,
            config=LiteConfig(heartbeat_s=0.5, update_s=0.2),
            topics=Topics(fleet=f"{topic_prefix}/fleet"),
            models={MODEL: 1},
        )
        await fleet.start()
        try:
            await _until(
                lambda: _online(url_b) >= AGENTS, 20, "every agent online (shared subscription)"
            )
            body = {
                "model": MODEL,
                "version": 2,
                "strategy": "canary",
                "waves": ["10%", "50%", "100%"],
                "bake_s": 1.5,
                "wave_timeout_s": 30.0,
                "gates": {"control_max_age_s": 2.0},
            }
            started = await asyncio.to_thread(client_b.post, "/api/v1/rollouts", body)
            rid = started["id"]
            view = lambda: client_b.get(f"/api/v1/rollouts/{rid}")  # noqa: E731

            def wave_issued(n: int) -> bool:
                return any(
                    e["kind"] == "wave-issued" and e["detail"].get("wave") == n
                    for e in view()["events"]
                )

            await _until(lambda: wave_issued(2), 30, "wave 2 issued by the leader")
            a.proc.send_signal(signal.SIGKILL)  # mid-wave: issued, not yet converged
            a.proc.wait(5)
            killed = time.monotonic()
            await _until(lambda: _leads(url_b), 10, "replica B took the lead")
            takeover_s = time.monotonic() - killed

            await _until(lambda: view()["state"] != "running", 60, "rollout finished")
            final = await asyncio.to_thread(view)
            assert final["state"] == "succeeded", final.get("reason")
            issued = Counter(
                e["detail"]["wave"] for e in final["events"] if e["kind"] == "wave-issued"
            )
            assert issued == {1: 1, 2: 1, 3: 1}, issued  # no wave issued twice
            verdicts = {a["agent_id"]: a["state"] for a in final["agents"]}
            assert len(verdicts) == AGENTS and set(verdicts.values()) == {"updated"}, verdicts
            assert fleet.on_version(MODEL, 2) == AGENTS
            # Each agent installed v2 once: the new leader re-asserted the documents it
            # found (same version, agents ignore them), it did not issue them again.
            assert fleet.stats.updates_ok == AGENTS, fleet.stats
            assert fleet.stats.updates_failed == 0
            assert takeover_s < 5.0, takeover_s
        finally:
            await fleet.stop()

    try:
        asyncio.run(scenario())
    finally:
        procs.stop()


def _online(url: str) -> float:
    with urllib.request.urlopen(f"{url}/metrics", timeout=5) as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith("gateway_agents_online "):
                return float(line.split()[1])
    return 0.0
