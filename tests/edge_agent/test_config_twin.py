"""The configuration twin on a real in-process agent (real mosquitto, real ONNX model):
signed config sections reach every pipeline's core and dispatcher, the signature and
the sequence check cover them, one bad value refuses the whole section, a restart takes
the retained config back, and the precedence flags < twin holds."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bus.desired import Desired, WantedConfig, sign_desired
from edge_agent.app.agent import EdgeAgent
from edge_agent.app.config_twin import ConfigTwin, overlay
from edge_agent.app.settings import EdgeSettings
from models.errors import InvalidInput
from models.signing import ensure_key
from tests.cloud_gateway.mqttutil import until
from tests.edge_agent.conftest import agent_settings, publisher, reading


def _doc(
    key: Ed25519PrivateKey,
    sequence: int,
    config: dict[str, Any] | None,
    *,
    version: int = 1,
    target: str,
    kind: str = "agent",
) -> bytes:
    wanted = None if config is None else WantedConfig(version=version, values=config)
    desired = Desired(
        target=target,
        target_kind=kind,  # type: ignore[arg-type]
        sequence=sequence,
        models={},
        issued_at=0.0,
        config=wanted,
    )
    return sign_desired(desired, key)


@pytest.fixture
def gateway_key(tmp_path: Path) -> tuple[Ed25519PrivateKey, Path]:
    path = tmp_path / "gw" / "desired.key"
    path.parent.mkdir()
    return ensure_key(path), path.with_suffix(".pub")


def _settings(mosquitto: Any, repo: Path, prefix: str, pub: Path, **kw: Any) -> EdgeSettings:
    return agent_settings(
        mosquitto.url, repo, prefix, gateway_key=str(pub), policy="slo-aware", **kw
    )


async def test_config_reaches_core_and_dispatcher_and_survives_a_restart(
    mosquitto: Any, repo: Path, topic_prefix: str, make_agent: Any, gateway_key: Any
) -> None:
    key, pub = gateway_key
    s = _settings(mosquitto, repo, topic_prefix, pub, max_wait_ms=2.0)
    agent = EdgeAgent(s)
    try:
        await agent.start()
        latest = await _exercise(agent, key, s)
    finally:
        await agent.stop()
    # Restart: the broker redelivers the retained document the agent accepted before;
    # the persisted sequence makes it a duplicate for the models, not for the config.
    again: EdgeAgent = await make_agent(s)
    assert again.heartbeat()["config"]["version"] == 0
    await again.updater.handle_desired(latest)
    assert again.heartbeat()["config"]["version"] == 7 and again.core.slo_s == pytest.approx(0.25)


async def _exercise(agent: EdgeAgent, key: Ed25519PrivateKey, s: EdgeSettings) -> bytes:
    target = s.agent_id
    manifest_slo = agent.core.slo_s
    assert agent.heartbeat()["config"]["version"] == 0

    values = {"policy": "cascade", "slo_ms": 300, "max_wait_ms": 7, "cascade_min_confidence": 0.6}
    first = _doc(key, 10, values, version=4, target=target)
    await agent.updater.handle_desired(first)
    hb = agent.heartbeat()["config"]
    assert (hb["version"], hb["state"], hb["overrides"]) == (4, "ok", sorted(values))
    assert hb["effective"]["policy"] == "cascade" and hb["effective"]["slo_ms"] == 300
    d = agent.dispatcher
    assert d.policy.name == "cascade" and d.cascade is not None
    assert d.cascade.min_confidence == 0.6
    assert d.max_wait == pytest.approx(0.007) and agent.core.slo_s == pytest.approx(0.3)
    assert agent.settings.policy == "cascade"  # models added later get it too

    # Tampered: the config inside a signed document changed afterwards.
    envelope = json.loads(_doc(key, 11, {"slo_ms": 50}, version=5, target=target))
    envelope["document"] = envelope["document"].replace('"slo_ms":50', '"slo_ms":5000')
    await agent.updater.handle_desired(json.dumps(envelope).encode())
    assert agent.update_state["state"] == "failed" and "signature" in agent.update_state["reason"]
    # Replayed: an older sequence, however validly signed.
    await agent.updater.handle_desired(_doc(key, 9, {"slo_ms": 50}, version=5, target=target))
    assert "stale desired state" in agent.update_state["reason"]
    assert agent.core.slo_s == pytest.approx(0.3) and agent.heartbeat()["config"]["version"] == 4

    # One bad value beside good ones: the whole section is refused, nothing changes.
    bad = _doc(key, 12, {"policy": "local-only", "max_wait_ms": -1}, version=6, target=target)
    await agent.updater.handle_desired(bad)
    hb = agent.heartbeat()["config"]
    assert (hb["state"], hb["version"], hb["refused_version"]) == ("failed", 4, 6)
    assert "max_wait_ms" in hb["reason"] and "refused whole" in hb["reason"]
    assert agent.dispatcher.policy.name == "cascade"

    # A site document without a config leaves it; the agent's own without one: flags.
    site = _doc(key, 1, None, target=s.site, kind="site")
    await agent.updater.handle_desired(site)
    assert agent.heartbeat()["config"]["version"] == 4
    await agent.updater.handle_desired(_doc(key, 13, values, version=4, target=target))
    assert agent.heartbeat()["config"]["state"] == "ok"  # the good one again clears it
    await agent.updater.handle_desired(_doc(key, 14, None, target=target))
    hb = agent.heartbeat()["config"]
    assert (hb["version"], hb["overrides"], hb["effective"]["policy"]) == (0, [], "slo-aware")
    assert agent.dispatcher.policy.name == "slo-aware" and agent.core.slo_s == manifest_slo
    assert agent.dispatcher.max_wait == pytest.approx(0.002)

    latest = _doc(key, 15, {"slo_ms": 250}, version=7, target=target)
    await agent.updater.handle_desired(latest)
    assert agent.heartbeat()["config"]["version"] == 7
    return latest


def test_overlay_uses_the_settings_model_and_only_live_names(tmp_path: Path) -> None:
    flags = EdgeSettings(agent_id="a-1", repository=tmp_path, slo_ms=100, policy="threshold")
    assert overlay(flags, {}).slo_ms == 100  # nothing set: the flags
    eff = overlay(flags, {"slo_ms": 40, "anomaly_threshold": None})
    assert (eff.slo_ms, eff.policy, eff.agent_id) == (40, "threshold", "a-1")
    for values, needle in (
        ({"policy": "fastest"}, "policy"),
        ({"slo_ms": 0}, "slo_ms"),
        ({"heartbeat_s": "often"}, "heartbeat_s"),
        ({"broker": "mqtt://elsewhere:1883"}, "not a live setting"),
        ({"slo_ms": [1, 2]}, "JSON scalar"),
    ):
        with pytest.raises(InvalidInput, match=needle):
            overlay(flags, values)


def test_twin_precedence_and_refusals_without_an_agent(tmp_path: Path) -> None:
    flags = EdgeSettings(agent_id="a-1", repository=tmp_path, heartbeat_s=5.0)
    applied: list[EdgeSettings] = []
    twin = ConfigTwin(flags, applied.append)

    def doc(config: WantedConfig | None, kind: str = "agent") -> Desired:
        return Desired(
            target="a-1",
            target_kind=kind,
            sequence=1,
            models={},
            config=config,  # type: ignore[arg-type]
        )

    assert twin.on_desired(doc(WantedConfig(version=3, values={"heartbeat_s": 1.0})))
    assert applied[-1].heartbeat_s == 1.0
    # Removing the value (a new version without it) goes back to the flag.
    assert twin.on_desired(doc(WantedConfig(version=4, values={"slo_ms": 80})))
    assert (applied[-1].heartbeat_s, applied[-1].slo_ms) == (5.0, 80)
    assert not twin.on_desired(doc(WantedConfig(version=4, values={"slo_ms": 80})))  # same
    assert twin.on_desired(doc(WantedConfig(version=5, values={"slo_ms": -1})))
    assert not twin.on_desired(doc(WantedConfig(version=5, values={"slo_ms": -1})))  # reported
    assert twin.report()["state"] == "failed" and len(applied) == 2 and twin.refusals == 1


async def test_queued_windows_keep_their_deadline_and_the_shorter_wait_flushes_them(
    mosquitto: Any,
    repo: Path,
    topic_prefix: str,
    make_agent: Any,
    subscriber: Any,
    gateway_key: Any,
) -> None:
    """Windows held by a long batching wait under a 10 s SLO; then the twin sets a 50 ms
    SLO and a 1 ms wait: the held windows are answered at once (the shorter wait applies
    to the queue) and still meet their own 10 s deadline, though they waited far longer
    than 50 ms; windows produced afterwards get the new SLO; none is lost."""
    key, pub_key = gateway_key
    s = _settings(
        mosquitto,
        repo,
        topic_prefix,
        pub_key,
        slo_ms=10000,
        max_wait_ms=20000,
        inline_max_ms=0,
    )
    agent: EdgeAgent = await make_agent(s)
    results = subscriber(f"{topic_prefix}/results/#")
    pub = publisher(mosquitto.url)
    rng = np.random.default_rng(3)
    topic = f"{topic_prefix}/sensors/s/d/x"
    for seq in range(130):  # windows at 99, 109, 119, 129
        pub.publish(topic, reading(seq, rng.normal(size=6)), qos=1)
    await until(lambda: agent.dispatcher.depth == 4, what="4 windows held in the queue")
    held = time.monotonic()
    await asyncio.sleep(0.3)
    assert results.messages == []  # still held by the 20 s wait
    doc = _doc(key, 1, {"slo_ms": 50, "max_wait_ms": 1}, version=2, target=s.agent_id)
    await agent.updater.handle_desired(doc)
    got = await asyncio.to_thread(results.wait_for, 4, 10.0)
    assert time.monotonic() - held >= 0.3
    assert [r["seq"] for r in got] == [99, 109, 119, 129]
    assert all(r["deadline_met"] and r["latency_ms"]["total"] > 300 for r in got)
    assert agent.core.slo_s == pytest.approx(0.05)
    for seq in range(130, 140):
        pub.publish(topic, reading(seq, rng.normal(size=6)), qos=1)
    later = await asyncio.to_thread(results.wait_for, 5, 10.0)
    pub.loop_stop()
    assert [r["seq"] for r in later] == [99, 109, 119, 129, 139]
