"""Window payloads (JSON and binary), the executor path, anomaly models and alerts."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import numpy as np

from bus.readings import encode_binary
from models import basicmotions, vibration
from models.backends import load_backend
from models.repository import ModelRepository
from tests.edge_agent.conftest import agent_settings, publisher, reading


async def test_window_payloads_on_the_executor_path(
    mosquitto: Any, repo: Path, topic_prefix: str, make_agent: Any, subscriber: Any
) -> None:
    agent = await make_agent(
        agent_settings(mosquitto.url, repo, topic_prefix, inline_max_ms=0, max_batch=4)
    )
    results = subscriber(f"{topic_prefix}/results/#")
    x, _ = basicmotions.load("test")
    pub = publisher(mosquitto.url)
    try:
        for i in range(6):
            topic = f"{topic_prefix}/sensors/s/w{i % 2}/imu"
            seq = 99 + 100 * (i // 2)
            if i % 2:
                payload = encode_binary(x[i], seq, 123.0 + i)
            else:
                payload = json.dumps({"ts": 123.0 + i, "seq": seq, "values": x[i].tolist()})
            pub.publish(topic, payload, qos=1)
        got = await asyncio.to_thread(results.wait_for, 6, 10)
    finally:
        pub.disconnect()
        pub.loop_stop()
    assert len(got) == 6
    direct = load_backend(repo / "motion-edge" / "1" / "model.onnx").infer({"input": x[:6]})
    for r in got:
        i = round(r["ts"] - 123.0)
        assert r["seq"] == 99 + 100 * (i // 2) and r["device"] == f"w{i % 2}"
        np.testing.assert_allclose(
            r["output"]["scores"], direct["probabilities"][i], rtol=1e-5, atol=1e-6
        )
    assert agent.stats.routes["local"] >= 2  # several batches went through the executor


async def test_anomaly_model_scores_and_alerts(
    mosquitto: Any, repo: Path, topic_prefix: str, make_agent: Any, subscriber: Any
) -> None:
    manifest = ModelRepository(repo, check=False).manifest("vibration-anomaly")
    w, c = manifest.preprocessing.window, len(manifest.preprocessing.channels)
    await make_agent(agent_settings(mosquitto.url, repo, topic_prefix, model="vibration-anomaly"))
    results = subscriber(f"{topic_prefix}/results/#")
    alerts = subscriber(f"{topic_prefix}/alerts/#")
    quiet = vibration.windows(1, seed=4, window=w)[0]
    loud = vibration.windows(1, fault="bearing", severity=3.0, seed=4, window=w)[0]
    assert quiet.shape == (w, c)
    pub = publisher(mosquitto.url)
    try:
        pub.publish(f"{topic_prefix}/sensors/s/m1/vib", encode_binary(quiet, w - 1, 1.0), qos=1)
        pub.publish(f"{topic_prefix}/sensors/s/m1/vib", encode_binary(loud, 2 * w - 1, 2.0), qos=1)
        got = await asyncio.to_thread(results.wait_for, 2, 10)
    finally:
        pub.disconnect()
        pub.loop_stop()
    backend = load_backend(repo / "vibration-anomaly" / "1" / "model.onnx")
    scores = backend.infer({"input": np.stack([quiet, loud])})["score"][:, 0]
    thr = manifest.postprocessing.threshold
    assert [r["output"]["anomaly"] for r in got] == [bool(s > thr) for s in scores]
    np.testing.assert_allclose([r["output"]["score"] for r in got], scores, rtol=1e-5)
    assert scores[0] <= thr < scores[1]
    alert = (await asyncio.to_thread(alerts.wait_for, 1, 5))[0]
    assert alert["kind"] == "anomaly" and alert["device"] == "m1"


async def test_class_change_alert(
    mosquitto: Any, repo: Path, topic_prefix: str, make_agent: Any, subscriber: Any
) -> None:
    x, labels = basicmotions.load("test")
    first = labels.index("Standing")
    second = labels.index("Running")
    await make_agent(agent_settings(mosquitto.url, repo, topic_prefix, hop=100))
    alerts = subscriber(f"{topic_prefix}/alerts/#")
    results = subscriber(f"{topic_prefix}/results/#")
    pub = publisher(mosquitto.url)
    try:
        for seq, row in enumerate(np.concatenate([x[first], x[second]])):
            pub.publish(f"{topic_prefix}/sensors/s/p/imu", reading(seq, row), qos=1)
        got = await asyncio.to_thread(results.wait_for, 2, 10)
    finally:
        pub.disconnect()
        pub.loop_stop()
    assert [r["output"]["label"] for r in got] == ["Standing", "Running"]
    alert = (await asyncio.to_thread(alerts.wait_for, 1, 5))[0]
    assert alert["kind"] == "class-change" and alert["detail"] == "Standing -> Running"
