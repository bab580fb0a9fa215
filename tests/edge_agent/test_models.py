"""Several models per agent: topic bindings, an agent that starts empty, no-model dead
letters, and a swap of one model that leaves the other serving every reading."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge_agent.ingest.bindings import Binding, Bindings, covers, topic_matches
from models.errors import ConfigError
from models.recipes import build_model
from models.repository import ModelRepository
from models.signing import load_trusted_keys
from tests.edge_agent.conftest import AgentProcess, Subscriber, agent_settings, publisher, reading


def test_topic_matching_and_coverage() -> None:
    assert topic_matches("sensors/+/+/imu", "sensors/s1/d1/imu")
    assert not topic_matches("sensors/+/+/imu", "sensors/s1/d1/vib")
    assert topic_matches("sensors/#", "sensors") and topic_matches("sensors/#", "sensors/a/b/c")
    assert not topic_matches("sensors/+", "sensors/a/b")
    assert covers("sensors/+/+/+", "sensors/+/+/imu") and covers("#", "a/+/b")
    assert not covers("sensors/+/+/imu", "sensors/+/+/+")
    assert not covers("sensors/+/+/+", "sensors/#")


def test_bindings_resolve_first_match_then_default() -> None:
    b = Bindings()
    b.bind("motion", "sensors/+/+/imu")
    b.bind("vib", "sensors/+/+/vib")
    assert b.resolve("sensors/s/d/imu") == "motion" and b.resolve("sensors/s/d/vib") == "vib"
    assert b.resolve("sensors/s/d/temp") is None  # no default: a no-model dead letter
    b.bind("fallback", None)
    assert b.resolve("sensors/s/d/temp") == "fallback"
    with pytest.raises(ConfigError, match="only one model may be the default"):
        b.bind("other", None)
    b.bind("vib", "sensors/site-2/+/vib")  # moved
    assert b.resolve("sensors/s/d/vib") == "fallback"
    # One subscription covering everything: overlapping ones would double every reading.
    assert b.subscriptions(["sensors/+/+/+"]) == ["sensors/+/+/+"]
    assert b.subscriptions(["sensors/site-1/+/+"]) == [
        "sensors/site-1/+/+",
        "sensors/+/+/imu",
        "sensors/site-2/+/vib",
    ]


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("Bad Name", "invalid model name"),
        ("m:0", "positive integer"),
        ("m=", "empty topic filter"),
        ("m=a/#/b", "bad wildcard"),
        ("m=a/x+", "bad wildcard"),
    ],
)
def test_binding_refusals_name_the_problem(text: str, why: str) -> None:
    with pytest.raises(ConfigError, match=why):
        Binding.parse(text)


def test_binding_parse() -> None:
    assert Binding.parse("vibration-anomaly:2=sensors/+/+/vib") == Binding(
        "vibration-anomaly", 2, "sensors/+/+/vib"
    )


def test_agent_without_a_model_is_ready_and_dead_letters_no_model(
    mosquitto: Any, repo: Path, topic_prefix: str
) -> None:
    agent_id = f"{topic_prefix}-empty"
    beats = Subscriber(mosquitto.url, f"{topic_prefix}/fleet/{agent_id}/status")
    dead = Subscriber(mosquitto.url, f"{topic_prefix}/deadletter/{agent_id}")
    agent = AgentProcess(
        [
            *("--agent-id", agent_id, "--broker", mosquitto.url, "--repository", str(repo)),
            *("--topic-prefix", topic_prefix, "--topics-filter", f"{topic_prefix}/sensors/+/+/+"),
            *("--http-port", "0", "--heartbeat-s", "0.3"),
        ]
    )
    try:
        agent.wait_ready()
        assert any("edge-agent ready" in ln and "model=- " in ln for ln in agent.lines)
        hb = beats.wait_for(1, timeout=10)[-1]
        assert hb["models"] == {} and hb["health"]["ready"] is True
        pub = publisher(mosquitto.url)
        pub.publish(f"{topic_prefix}/sensors/s/d/imu", reading(0, [0.0] * 6), qos=1)
        msg = dead.wait_for(1, timeout=10)[0]
        assert msg["reason"] == "no-model" and "no served model" in msg["detail"]
        pub.loop_stop()
        beats.close()
        dead.close()
        status = agent.status()
        assert status["models"] == [] and status["deadletter"]["by_reason"] == {"no-model": 1}
    finally:
        agent.stop()


async def test_two_models_on_their_topics_and_a_swap_of_one_spares_the_other(
    mosquitto: Any,
    repo: Path,
    built_models: Any,
    topic_prefix: str,
    make_agent: Any,
    subscriber: Any,
    tmp_path: Path,
) -> None:
    """The acceptance case: a rollout of A on an agent serving A and B costs B nothing."""
    bundle = build_model("motion-edge", 2, tmp_path / "b", built_models.key)
    ModelRepository(repo, check=False).install(bundle, load_trusted_keys(built_models.public_key))
    imu, vib = f"{topic_prefix}/sensors/+/+/imu", f"{topic_prefix}/sensors/+/+/vib"
    settings = agent_settings(
        mosquitto.url, repo, topic_prefix, model=[f"motion-edge={imu}", f"vibration-anomaly={vib}"]
    )
    agent = await make_agent(settings)
    results = subscriber(f"{topic_prefix}/results/#")
    dead = subscriber(f"{topic_prefix}/deadletter/#")
    pub = publisher(mosquitto.url)
    rng = np.random.default_rng(2)
    n_vib, swapped = 256 + 128 * 12, None
    try:
        for seq in range(n_vib):
            pub.publish(f"{topic_prefix}/sensors/s/m1/vib", reading(seq, rng.normal(size=3)), qos=1)
            if seq < 400:
                pub.publish(
                    f"{topic_prefix}/sensors/s/w1/imu", reading(seq, rng.normal(size=6)), qos=1
                )
            if seq == 300:
                swapped = await agent.swap("motion-edge", 2)
            if seq % 50 == 0:
                await asyncio.sleep(0.01)
        pub.publish(f"{topic_prefix}/sensors/s/x1/temp", reading(0, [1.0]), qos=1)
        want_vib = list(range(255, n_vib, 128))
        want_imu = list(range(99, 400, 10))
        got = await asyncio.to_thread(results.wait_for, len(want_vib) + len(want_imu), 30.0)
        await asyncio.to_thread(dead.wait_for, 1, 10.0)
    finally:
        pub.loop_stop()
    assert swapped is not None and swapped.version == 2
    by_model: dict[str, list[dict[str, Any]]] = {}
    for r in got:
        by_model.setdefault(r["model"], []).append(r)
    vib_results = by_model["vibration-anomaly"]
    assert sorted(r["seq"] for r in vib_results) == want_vib  # complete, nothing doubled
    assert all(r["output"].get("error") is None for r in vib_results)  # zero failed
    assert all(r["device"] == "m1" for r in vib_results)
    imu_results = by_model["motion-edge"]
    assert sorted(r["seq"] for r in imu_results) == want_imu
    assert {r["version"] for r in imu_results} == {1, 2}
    assert [json.loads(p)["reason"] for _, p in dead.messages] == ["no-model"]
    hb = agent.heartbeat()
    assert {n: m["version"] for n, m in hb["models"].items()} == {
        "motion-edge": 2,
        "vibration-anomaly": 1,
    }
    assert hb["models"]["vibration-anomaly"]["topics"] == vib
    assert hb["models"]["vibration-anomaly"]["metrics"]["errors"] == 0


async def test_models_added_and_removed_at_runtime_are_remembered(
    mosquitto: Any, repo: Path, topic_prefix: str, make_agent: Any, subscriber: Any
) -> None:
    vib = f"{topic_prefix}/sensors/+/+/vib"
    agent = await make_agent(agent_settings(mosquitto.url, repo, topic_prefix, model=[]))
    assert agent.ready and agent.heartbeat()["models"] == {}
    manifest = await agent.swap("vibration-anomaly", 1, vib)
    assert manifest.ref == "vibration-anomaly:1" and agent.serving("vibration-anomaly") == 1
    remembered = json.loads((repo / "served.json").read_text())
    assert remembered == {"models": [{"name": "vibration-anomaly", "topics": vib}]}
    results = subscriber(f"{topic_prefix}/results/#")
    pub = publisher(mosquitto.url)
    rng = np.random.default_rng(3)
    try:
        for seq in range(256):  # subscribed at runtime: the new filter is live
            pub.publish(f"{topic_prefix}/sensors/s/m/vib", reading(seq, rng.normal(size=3)), qos=1)
        got = await asyncio.to_thread(results.wait_for, 1, 15.0)
    finally:
        pub.loop_stop()
    assert got[0]["model"] == "vibration-anomaly" and got[0]["seq"] == 255
    # A restart without flags serves it at once (before any desired state arrives).
    again = await make_agent(
        agent_settings(mosquitto.url, repo, f"{topic_prefix}b", model=[], agent_id="other")
    )
    assert again.serving("vibration-anomaly") == 1
    await again.stop()
    await agent.remove("vibration-anomaly")
    assert agent.serving("vibration-anomaly") is None
    assert json.loads((repo / "served.json").read_text()) == {"models": []}


def test_cloud_model_mapping_per_local_model() -> None:
    from edge_agent.app.settings import EdgeSettings

    one = EdgeSettings(model=["motion-edge"], cloud_model="motion-cloud")
    assert one.cloud_model_for("motion-edge") == "motion-cloud"
    many = EdgeSettings(
        model=["motion-edge", "vibration-anomaly=s/+/+/v"], cloud_model="motion-edge=motion-cloud"
    )
    assert many.cloud_model_for("motion-edge") == "motion-cloud"
    assert many.cloud_model_for("vibration-anomaly") is None  # same name on the cloud tier


def test_mqtt_password_from_a_file(tmp_path: Path) -> None:
    from edge_agent.app.agent import broker_url
    from edge_agent.app.settings import EdgeSettings

    secret = tmp_path / "token"
    secret.write_text("s3cret\n")
    s = EdgeSettings(agent_id="node-7", broker="mqtt://h:1883", mqtt_password_file=str(secret))
    url = broker_url(s)
    assert (url.username, url.password, url.host) == ("node-7", "s3cret", "h")
    assert "s3cret" not in str(url)  # never printed
    shared = EdgeSettings(broker="mqtt://site:pw@h", mqtt_password_file=str(secret))
    assert broker_url(shared).password == "pw"  # the URL's own credentials win
    s = EdgeSettings(broker="mqtt://site-user@h", mqtt_password_file=str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match="--mqtt-password-file"):
        broker_url(s)
