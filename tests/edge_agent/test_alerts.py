"""Routable alerts from a real agent: severity, stable key, firing once, resolved once."""

from __future__ import annotations

import asyncio
from datetime import datetime
from pathlib import Path
from typing import Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict

from bus.alerts import Alert
from bus.readings import encode_binary
from edge_agent.output.alerts import RESOLVE_AFTER
from models import vibration
from models.repository import ModelRepository
from simulators.alert_bridge import BridgeSettings, run
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


class PostableAlert(BaseModel):
    """Alertmanager v2 ``postableAlert`` (api/v2/openapi.yaml): what the server accepts."""

    model_config = ConfigDict(extra="forbid")

    labels: dict[str, str]
    annotations: dict[str, str] = {}
    startsAt: datetime | None = None
    endsAt: datetime | None = None
    generatorURL: str | None = None


async def test_bridge_posts_alertmanager_v2_alerts(
    mosquitto: Any, repo: Path, topic_prefix: str, make_agent: Any
) -> None:
    """Agent -> MQTT -> simulators.alert_bridge -> a tiny Alertmanager-shaped HTTP server."""
    posted: list[Any] = []

    async def receive(request: web.Request) -> web.Response:
        assert request.content_type == "application/json"
        posted.append(await request.json())
        return web.Response(status=200)

    app = web.Application()
    app.router.add_post("/api/v2/alerts", receive)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    settings = BridgeSettings(
        broker=mosquitto.url,
        alertmanager=f"http://127.0.0.1:{port}",
        topic_prefix=topic_prefix,
        repeat_s=1.0,
        generator_url="http://gateway.example/dashboard",
    )
    stop = asyncio.Event()
    bridge_task = asyncio.create_task(run(settings, stop))
    await asyncio.sleep(0.5)  # subscribed before the first alert
    manifest = ModelRepository(repo, check=False).manifest("vibration-anomaly")
    w = manifest.preprocessing.window
    await make_agent(agent_settings(mosquitto.url, repo, topic_prefix, model="vibration-anomaly"))
    quiet = vibration.windows(1, seed=4, window=w)[0]
    loud = vibration.windows(1, fault="bearing", severity=3.0, seed=4, window=w)[0]
    pub = publisher(mosquitto.url)
    try:
        pub.publish(f"{topic_prefix}/sensors/s/m1/vib", b"not an alert", qos=1)  # not alerts/
        pub.publish(f"{topic_prefix}/alerts/s/m1", b'{"kind": "anomaly"}', qos=1)  # malformed
        pub.publish(f"{topic_prefix}/sensors/s/m1/vib", encode_binary(loud, w - 1, 1.0), qos=1)
        await _until(lambda: posted, 10)
        await asyncio.sleep(1.5)  # one repeat of the still-firing alert
        for k in range(RESOLVE_AFTER):
            payload = encode_binary(quiet, (k + 2) * w - 1, 2.0 + k)
            pub.publish(f"{topic_prefix}/sensors/s/m1/vib", payload, qos=1)
        await _until(lambda: any("endsAt" in a for batch in posted for a in batch), 10)
    finally:
        pub.disconnect()
        pub.loop_stop()
        stop.set()
        bridge = await bridge_task
        await runner.cleanup()
    assert all(isinstance(batch, list) and batch for batch in posted)
    alerts = [PostableAlert.model_validate(a) for batch in posted for a in batch]
    firing = [a for a in alerts if a.endsAt is None]
    resolved = [a for a in alerts if a.endsAt is not None]
    assert len(firing) >= 2, "the firing alert is re-posted while it lasts"
    assert len(resolved) == 1 and bridge.rejected == 1
    labels = {
        "alertname": "EdgeAnomaly",
        "severity": "warning",
        "site": "s",
        "device": "m1",
        "stream": "vib",
        "key": "anomaly:s/m1/vib",
    }
    assert all(a.labels == labels for a in alerts), "same labels: Alertmanager folds them"
    assert len({a.startsAt for a in alerts}) == 1
    end = resolved[0].endsAt
    assert end is not None and end.tzinfo is not None and firing[0].startsAt is not None
    assert end > firing[0].startsAt
    assert firing[0].annotations["agent"] and float(firing[0].annotations["value"]) > 0
    assert firing[0].generatorURL == "http://gateway.example/dashboard"


async def _until(check: Any, within_s: float) -> None:
    deadline = asyncio.get_running_loop().time() + within_s
    while not check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("timed out")
        await asyncio.sleep(0.05)
