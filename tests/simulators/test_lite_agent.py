"""Lite agents against a real mosquitto: their own sessions and wills, the heartbeat
format, and the real desired-state checks (signature, sequence) - plus a CI-sized run of
the control-plane benchmark against a real ``cloud-gateway serve`` process."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bus.desired import Desired, WantedModel, sign_desired
from bus.topics import Topics
from models.signing import key_id
from simulators.fleet_bench import FleetBenchConfig, build_bundles, run_size
from simulators.lite_agent import LiteConfig, LiteFleet


def _watch(port: int, topic_filter: str) -> tuple[mqtt.Client, list[tuple[str, bytes]]]:
    seen: list[tuple[str, bytes]] = []
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    client.on_message = lambda c, u, m: seen.append((m.topic, bytes(m.payload)))
    client.connect("127.0.0.1", port)
    client.subscribe(topic_filter, qos=1)
    client.loop_start()
    time.sleep(0.2)
    return client, seen


async def _eventually(pred: Any, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not pred():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


def _signed(key: Ed25519PrivateKey, target: str, sequence: int, version: int) -> bytes:
    doc = Desired(
        target=target,
        sequence=sequence,
        models={"motion-edge": WantedModel(version=version)},
        issued_at=time.time(),
    )
    return sign_desired(doc, key)


def test_lite_agents_have_own_sessions_wills_and_verify_desired_state(
    mosquitto: Any, topic_prefix: str
) -> None:
    topics = Topics(fleet=f"{topic_prefix}/fleet")
    gateway_key, forger = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    trusted = {key_id(gateway_key.public_key()): gateway_key.public_key()}
    watcher, seen = _watch(mosquitto.port, f"{topic_prefix}/fleet/+/status")
    publisher = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    publisher.connect("127.0.0.1", mosquitto.port)
    publisher.loop_start()

    async def scenario() -> None:
        fleet = LiteFleet(
            "127.0.0.1",
            mosquitto.port,
            20,
            gateway_url="http://127.0.0.1:1",
            gateway_keys=trusted,
            token=None,
            config=LiteConfig(heartbeat_s=0.5, update_s=0.01),
            topics=topics,
            models={"motion-edge": 2},
        )
        await fleet.start()
        try:
            # Every agent's first heartbeat, in the edge agent's heartbeat format.
            await _eventually(lambda: len({t for t, _ in seen}) == 20)
            doc = json.loads(seen[0][1])
            assert set(doc) >= {"agent_id", "site", "online", "models", "update", "health"}
            assert doc["models"]["motion-edge"]["version"] == 2
            assert set(doc["metrics"]) >= {"inferences", "errors", "p99_ms", "nan_outputs"}

            first, second = fleet.agents[0], fleet.agents[1]
            desired = topics.desired(first.agent_id)
            # A correctly signed downgrade without the rollback mark: refused by the rule.
            publisher.publish(desired, _signed(gateway_key, first.agent_id, 10, 1), qos=1)
            await _eventually(lambda: first.update_state["state"] == "failed")
            assert "downgrade refused" in first.update_state["reason"]
            # Forged (a key the agent does not trust) and addressed to someone else.
            publisher.publish(desired, _signed(forger, first.agent_id, 11, 3), qos=1)
            publisher.publish(desired, _signed(gateway_key, second.agent_id, 12, 3), qos=1)
            # A replay of an older sequence, validly signed.
            publisher.publish(desired, _signed(gateway_key, first.agent_id, 9, 2), qos=1)
            await _eventually(lambda: fleet.stats.desired_refused == 3)
            assert fleet.stats.refusals == {
                "unknown-signer": 1,
                "permission-denied": 1,
                "invalid-input": 1,
            }
            assert first.models == {"motion-edge": 2}

            # A dropped connection: the broker publishes that agent's own last will.
            second.close(clean=False)
            await _eventually(
                lambda: any(
                    t == topics.status(second.agent_id) and json.loads(p)["online"] is False
                    for t, p in seen
                )
            )
            assert fleet.stats.sessions_lost == 1
        finally:
            await fleet.stop()

    try:
        asyncio.run(scenario())
    finally:
        watcher.loop_stop()
        publisher.loop_stop()


def test_fleet_benchmark_canary_and_rollback_with_200_agents(tmp_path: Path) -> None:
    """The benchmark's own run at CI size: a real gateway process, 200 lite agents, a
    1 %/10 %/100 % canary that must succeed and a bad version that must roll back."""
    cfg = FleetBenchConfig(
        agents=[200],
        heartbeat_s=1.0,
        steady_s=2.0,
        update_s=0.1,
        bake_s=0.5,
        bad_rate=0.05,
        tick_s=0.2,
    )
    bundles, trusted = build_bundles(tmp_path)
    result = asyncio.run(run_size(200, cfg, tmp_path, bundles, trusted))
    steady, canary, rollback = result["steady"], result["canary"], result["rollback"]
    assert steady["ingested_per_s"] > 100  # 200 agents at 1 s, minus measuring jitter
    assert canary["state"] == "succeeded"
    assert canary["on_v2"] == 200
    assert len(canary["waves_issue_to_converged_s"]) == 3
    assert rollback["state"] == "rolled_back"
    assert rollback["agents_failed"] >= 1
    assert rollback["first_failure_to_all_back_s"] is not None
    # The failing wave is the whole fleet: every agent is back on v2 (the wait for it is
    # part of the benchmark) and the touched agents include all that failed.
    everyone = result["rollback_all"]
    assert everyone["state"] == "rolled_back"
    assert everyone["agents_failed"] >= 1
    assert everyone["agents_touched"] >= everyone["agents_failed"]
    # One real download per version, every agent served from the shared cache.
    assert result["bundles"]["downloads"] == 2
    assert result["bundles"]["agent_downloads"] >= 200 + rollback["agents_touched"]
    assert result["sim"]["desired_refused"] == 0
    assert result["sim"]["sessions_lost"] == 0
