"""Routable alerts from a real agent: severity, stable key, firing once, resolved once."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from edge_agent.alerts import RESOLVE_AFTER, Alert
from edge_agent.payloads import encode_binary
from models import vibration
from models.repository import ModelRepository
from tests.edge_agent.conftest import agent_settings, publisher


async def test_anomaly_fires_once_and_resolves_after_quiet_windows(
    mosquitto: Any, repo: Path, topic_prefix: str, make_agent: Any, subscriber: Any
) -> None:
    manifest = ModelRepository(repo, check=False).manifest("vibration-anomaly")
    w = manifest.preprocessing.window
    await make_agent(agent_settings(mosquitto.url, repo, topic_prefix, model="vibration-anomaly"))
    results = subscriber(f"{topic_prefix}/results/#")
    alerts = subscriber(f"{topic_prefix}/alerts/#")
    quiet = vibration.windows(1, seed=4, window=w)[0]
    loud = vibration.windows(1, fault="bearing", severity=3.0, seed=4, window=w)[0]
    # quiet, 3 loud (one episode), quiet x RESOLVE_AFTER (resolves), loud (a new episode)
    plan = [quiet, loud, loud, loud] + [quiet] * RESOLVE_AFTER + [loud]
    pub = publisher(mosquitto.url)
    try:
        for k, window in enumerate(plan):
            seq = (k + 1) * w - 1
            payload = encode_binary(window, seq, 1.0 + k)
            pub.publish(f"{topic_prefix}/sensors/s/m1/vib", payload, qos=1)
        got = await asyncio.to_thread(results.wait_for, len(plan), 15)
        raised = await asyncio.to_thread(alerts.wait_for, 3, 5)
    finally:
        pub.disconnect()
        pub.loop_stop()
    got.sort(key=lambda r: r["seq"])
    expected = [False, True, True, True] + [False] * RESOLVE_AFTER + [True]
    assert [r["output"]["anomaly"] for r in got] == expected
    typed = [Alert.model_validate(a) for a in raised]
    assert [(a.kind, a.state, a.severity) for a in typed] == [
        ("anomaly", "firing", "warning"),
        ("anomaly", "resolved", "warning"),
        ("anomaly", "firing", "warning"),
    ]
    assert {a.key for a in typed} == {"anomaly:s/m1/vib"}
    first, resolved, again = typed
    assert first.seq == 2 * w - 1 and resolved.seq == (4 + RESOLVE_AFTER) * w - 1
    assert resolved.starts_at == first.starts_at == first.ts < resolved.ts
    assert again.starts_at > resolved.ts
    assert first.value is not None and first.value > manifest.postprocessing.threshold
    # Backward compatible: the original fields are all still there.
    assert set(raised[0]) >= {"ts", "site", "device", "stream", "kind", "detail", "seq", "agent"}
    await asyncio.sleep(0.5)
    assert len(alerts.messages) == 3, "no alert per anomalous window while firing"
