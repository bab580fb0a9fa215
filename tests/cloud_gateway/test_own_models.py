"""Issue 12's acceptance, end to end: a user's model the project does not ship (rank 2,
5 features -> 2 classes, built with onnx.helper) is packed with the CLI, pushed to a real
gateway and rolled out to a real ``edge-agent`` process that started with no model, bound
to its own topic; its results equal a direct ONNX Runtime run. A second model, rolled out
to the same agent on another topic first, keeps answering every window throughout."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import onnxruntime as ort
import pytest

from cloud_gateway.cli import main as gateway_main
from cloud_gateway.service import Gateway
from tests.cloud_gateway.bundles import BundleSet
from tests.cloud_gateway.conftest import TOKENS, auth
from tests.edge_agent.conftest import AgentProcess, Subscriber, publisher, reading
from tests.models.user_models import classifier

FEATURES = ("temperature", "pressure", "vibration", "current", "speed")


async def _rollout(
    http: aiohttp.ClientSession, gw: Gateway, model: str, version: int, agent: str, topics: str
) -> dict[str, Any]:
    body = {
        "model": model,
        "version": version,
        "topics": topics,
        "strategy": "all-at-once",
        "selector": {"agents": [agent]},
        "bake_s": 0,
        "gates": {"allow_idle_agents": True, "idle_grace_s": 0},
    }
    async with http.post(f"{gw.url}/api/v1/rollouts", json=body, headers=auth("admin")) as r:
        assert r.status == 201, await r.text()
        rid = (await r.json())["id"]
    end = time.monotonic() + 60
    while time.monotonic() < end:
        async with http.get(f"{gw.url}/api/v1/rollouts/{rid}", headers=auth("admin")) as r:
            row = await r.json()
        if row["state"] != "running":
            return row
        await asyncio.sleep(0.2)
    raise AssertionError(f"rollout {rid} still running: {row}")


async def _push(http: aiohttp.ClientSession, gw: Gateway, bundle: Path) -> None:
    data = await asyncio.to_thread(bundle.read_bytes)
    async with http.post(f"{gw.url}/api/v1/models", data=data, headers=auth("admin")) as r:
        assert r.status in (200, 201), await r.text()


class ImuLoad:
    """One IMU stream at 200 readings/s from a thread, until stopped."""

    def __init__(self, url: str, topic: str) -> None:
        self.client = publisher(url)
        self.topic = topic
        self.seq = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        rng = np.random.default_rng(4)
        next_t = time.monotonic()
        while not self._stop.is_set():
            self.client.publish(self.topic, reading(self.seq, rng.normal(size=6)), qos=1)
            self.seq += 1
            next_t += 0.005
            time.sleep(max(0.0, next_t - time.monotonic()))

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> int:
        self._stop.set()
        self._thread.join(5)
        self.client.loop_stop()
        return self.seq


@pytest.mark.slow
async def test_user_model_rolled_out_to_an_empty_agent_beside_a_second_model(
    gateway: Gateway, bundle_set: BundleSet, mosquitto: Any, topic_prefix: str, tmp_path: Path
) -> None:
    onnx_file = classifier(tmp_path / "press.onnx", features=5, classes=2, seed=11)
    out = tmp_path / "bundles"
    packed = gateway_main(
        [
            *("models", "pack", str(onnx_file), "--name", "press-health", "--version", "1"),
            *("--out", str(out), "--key", str(bundle_set.key)),
            *("--channels", ",".join(FEATURES), "--window", "1", "--sample-rate-hz", "1"),
            *("--labels", "ok,fault", "--slo-ms", "200"),
        ]
    )
    assert packed == 0
    user_bundle = out / "press-health-1.bundle"
    agent_id = f"{topic_prefix}-own"
    base = f"{topic_prefix}/sensors/{agent_id}"
    token = tmp_path / "agent.token"
    token.write_text(TOKENS["agent"])
    agent = AgentProcess(
        [
            *("--agent-id", agent_id, "--site", agent_id, "--broker", mosquitto.url),
            *("--repository", str(tmp_path / "agent-repo"), "--topic-prefix", topic_prefix),
            *("--topics-filter", f"{base}/+/+", "--http-port", "0", "--heartbeat-s", "0.3"),
            *("--policy", "local-only", "--gateway-url", gateway.url),
            *("--gateway-token-file", str(token), "--trusted-keys", str(bundle_set.trusted_dir)),
            *("--gateway-key", str(gateway.settings.signing_key_path().with_suffix(".pub"))),
        ]
    )
    results = Subscriber(mosquitto.url, f"{topic_prefix}/results/{agent_id}/#")
    load = ImuLoad(mosquitto.url, f"{base}/watch/imu")
    try:
        await asyncio.to_thread(agent.wait_ready, 30.0)
        assert agent.status()["models"] == []  # started empty
        async with aiohttp.ClientSession() as http:
            await _push(http, gateway, bundle_set.good[1])  # motion-edge v1
            await _push(http, gateway, user_bundle)
            first = await _rollout(http, gateway, "motion-edge", 1, agent_id, f"{base}/+/imu")
            assert first["state"] == "succeeded", first
            load.start()
            await asyncio.sleep(1.0)  # the second model answers before and during the rollout
            second = await _rollout(http, gateway, "press-health", 1, agent_id, f"{base}/+/press")
            assert second["state"] == "succeeded", second
        rng = np.random.default_rng(5)
        x = rng.normal(size=(20, 5)).astype(np.float32)
        pub = publisher(mosquitto.url)
        for seq, row in enumerate(x):
            values = {name: float(v) for name, v in zip(FEATURES, row, strict=True)}
            payload = json.dumps({"ts": time.time(), "seq": seq, "values": values}).encode()
            pub.publish(f"{base}/press-7/press", payload, qos=1)
        await asyncio.sleep(1.0)
        sent = await asyncio.to_thread(load.stop)
        pub.loop_stop()
        want_imu = list(range(99, sent, 10))
        await asyncio.to_thread(results.wait_for, len(want_imu) + len(x), 30.0)
        status = agent.status()
    finally:
        load.stop()
        agent.stop()
        results.close()
    got = results.json()
    press = {r["seq"]: r for r in got if r["model"] == "press-health"}
    assert sorted(press) == list(range(len(x)))
    expected = ort.InferenceSession(str(onnx_file)).run(None, {"x": x})[0]
    scores = np.asarray([press[i]["output"]["scores"] for i in range(len(x))], dtype=np.float64)
    np.testing.assert_allclose(scores, expected, atol=1e-5)
    assert [press[i]["output"]["label"] for i in range(len(x))] == [
        ("ok", "fault")[k] for k in expected.argmax(axis=1)
    ]
    imu = [r for r in got if r["model"] == "motion-edge"]
    assert sorted(r["seq"] for r in imu) == want_imu  # every window, none lost or doubled
    assert all(r["output"].get("error") is None for r in imu)  # zero failed inferences
    served = {m["name"]: (m["version"], m["topics"]) for m in status["models"]}
    assert served == {
        "motion-edge": (1, f"{base}/+/imu"),
        "press-health": (1, f"{base}/+/press"),
    }


async def _until(check: Any, within_s: float = 10.0) -> None:
    end = time.monotonic() + within_s
    while not check():
        assert time.monotonic() < end, "timed out"
        await asyncio.sleep(0.1)


async def _served(agent: AgentProcess, want: dict[str, tuple[int, str | None]]) -> None:
    end = time.monotonic() + 30
    while time.monotonic() < end:
        got = {m["name"]: (m["version"], m["topics"]) for m in agent.status()["models"]}
        if got == want:
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"agent serves {got}, expected {want}")


@pytest.mark.slow
async def test_gateway_adds_moves_and_removes_a_model_on_an_agent(
    gateway: Gateway, bundle_set: BundleSet, mosquitto: Any, topic_prefix: str, tmp_path: Path
) -> None:
    agent_id = f"{topic_prefix}-asg"
    base = f"{topic_prefix}/sensors/{agent_id}"
    token = tmp_path / "agent.token"
    token.write_text(TOKENS["agent"])
    agent = AgentProcess(
        [
            *("--agent-id", agent_id, "--site", agent_id, "--broker", mosquitto.url),
            *("--repository", str(tmp_path / "agent-repo"), "--topic-prefix", topic_prefix),
            *("--topics-filter", f"{base}/+/+", "--http-port", "0", "--heartbeat-s", "0.3"),
            *("--gateway-url", gateway.url, "--gateway-token-file", str(token)),
            *("--trusted-keys", str(bundle_set.trusted_dir)),
            *("--gateway-key", str(gateway.settings.signing_key_path().with_suffix(".pub"))),
        ]
    )
    path = f"{gateway.url}/api/v1/fleet/{agent_id}/models/motion-edge"
    try:
        await asyncio.to_thread(agent.wait_ready, 30.0)
        async with aiohttp.ClientSession() as http:
            await _push(http, gateway, bundle_set.good[1])
            await _until(lambda: gateway.fleet.find(agent_id) is not None)  # first heartbeat
            body = {"version": 1, "topics": f"{base}/+/imu"}
            async with http.put(path, json=body, headers=auth("admin")) as r:
                assert r.status == 200, await r.text()
                assert (await r.json())["desired"] == {"motion-edge": 1}
            await _served(agent, {"motion-edge": (1, f"{base}/+/imu")})
            body = {"version": 1, "topics": f"{base}/+/acc"}  # moved to another stream kind
            async with http.put(path, json=body, headers=auth("admin")) as r:
                assert r.status == 200, await r.text()
            await _served(agent, {"motion-edge": (1, f"{base}/+/acc")})
            bad = {"version": 1, "topics": "sensors/#/x"}
            async with http.put(path, json=bad, headers=auth("admin")) as r:
                assert r.status == 400 and "bad wildcard" in (await r.json())["message"]
            async with http.put(path, json=body, headers=auth("agent")) as r:
                assert r.status == 403  # assignments are the admin's
            async with http.delete(path, headers=auth("admin")) as r:
                assert r.status == 200 and (await r.json())["desired"] == {}
            await _served(agent, {})
            dead = Subscriber(mosquitto.url, f"{topic_prefix}/deadletter/{agent_id}")
            pub = publisher(mosquitto.url)
            pub.publish(f"{base}/w/acc", reading(0, [0.0] * 6), qos=1)
            msg = (await asyncio.to_thread(dead.wait_for, 1, 10.0))[0]
            pub.loop_stop()
            dead.close()
            assert msg["reason"] == "no-model"
    finally:
        agent.stop()
