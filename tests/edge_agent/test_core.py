"""AgentCore on the MQTT thread's side: mid-burst flushes, estimates, sensor-time deadlines."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from edge_agent.app.agent import EdgeAgent
from edge_agent.app.settings import EdgeSettings


async def _core_agent(repo: Path, **kw: Any) -> tuple[EdgeAgent, list[tuple[str, str]]]:
    """A real agent (real model, real dispatcher) whose publishes are captured, no broker."""
    base: dict[str, Any] = {"policy": "local-only", **kw}
    s = EdgeSettings(
        repository=repo, model="motion-edge", http_port=0, broker="mqtt://127.0.0.1:1", **base
    )
    agent = EdgeAgent(s)
    agent.core.loop = asyncio.get_running_loop()
    agent._build_routing()
    await agent.models.load("motion-edge", None)
    sent: list[tuple[str, str]] = []
    agent.core.publisher = type(
        "Capture",
        (),
        {
            "publish": lambda self, t, p, q=0, r=False: sent.append((t, p)),
            "publish_many": lambda self, msgs, q=0: sent.extend(msgs),
        },
    )()
    return agent, sent


def _fill(agent: EdgeAgent, devices: int, arrival: float) -> None:
    """One full window per device (the last reading of each completes it)."""
    rng = np.random.default_rng(3)
    for seq in range(100):
        for d in range(devices):
            row = rng.normal(size=6).round(4).tolist()
            payload = json.dumps({"ts": 1.0, "seq": seq, "values": row}).encode()
            agent.core.ingest(f"sensors/s/d{d}/imu", payload, arrival)


async def test_mid_burst_answers_windows_that_waited(repo: Path) -> None:
    agent, sent = await _core_agent(repo, max_wait_ms=50.0)
    try:
        # Teach the service model that batches are cheap, so they may run inline.
        agent.dispatcher.service.observe(8, 0.0002)
        _fill(agent, 8, arrival=time.monotonic())
        agent.core.mid_burst()  # just arrived: keeps batching
        assert sent == [] and len(agent.core._pending) == 8
        agent.core._pending[0].arrival -= 0.06  # the oldest has now waited > max_wait
        agent.core.mid_burst()
        assert len(sent) == 8 and not agent.core._pending
        assert {json.loads(p)["device"] for _, p in sent} == {f"d{d}" for d in range(8)}
        assert all(json.loads(p)["output"]["label"] is not None for _, p in sent)
    finally:
        await agent.stop()


async def test_dispatcher_sees_each_service_observation_at_once(repo: Path) -> None:
    """No stale per-dispatcher cache: the policy's inputs follow the service model."""
    agent, _ = await _core_agent(repo)
    try:
        d = agent.dispatcher
        d.service.reset()  # drop the warm-up seed: this test feeds its own history
        for n in range(1, 40):
            d.service.observe(n, 0.0001 * n)
        now = time.monotonic()
        assert d._observe(now, 64, now + 1).local_service_s == d.service.estimate(64)
        d.service.observe(64, 0.5)
        assert d._observe(now, 64, now + 1).local_service_s == 0.5
    finally:
        await agent.stop()


def _window_payload(seq: int, ts: float | None) -> bytes:
    rows = np.random.default_rng(seq).normal(size=(100, 6)).round(4).tolist()
    doc: dict[str, Any] = {"seq": seq, "values": rows}
    if ts is not None:
        doc["ts"] = ts
    return json.dumps(doc).encode()


async def test_latency_clock_starts_at_the_sensor_ts(repo: Path) -> None:
    """Old readings are late on arrival; skewed and missing ts fall back to arrival."""
    agent, sent = await _core_agent(repo, slo_ms=100.0, max_clock_skew_s=60.0, inline_max_ms=0)
    try:
        now = time.time()
        cases = {"old": now - 2.0, "fresh": now, "ahead": now + 5.0, "skewed": now - 3600.0}
        for i, ts in enumerate([*cases.values(), None]):
            agent.core.ingest(f"sensors/s/{i}/imu", _window_payload(99, ts), time.monotonic())
        await agent.dispatcher.drain(within_s=5.0)
        await asyncio.sleep(0.05)
        got = {json.loads(p)["device"]: json.loads(p) for _, p in sent}
        assert len(got) == 5
        old, fresh, ahead, skewed, no_ts = (got[str(i)] for i in range(5))
        assert old["deadline_met"] is False and old["latency_ms"]["total"] >= 2000.0
        assert old["latency_ms"]["transit"] >= 2000.0
        assert old["reason"] == "policy-local-only"  # answered, not dropped
        for r in (fresh, ahead, skewed, no_ts):
            assert r["deadline_met"] is True and r["latency_ms"]["total"] < 100.0
            assert r["latency_ms"]["transit"] < 100.0
        assert skewed["ts"] == cases["skewed"]  # the sensor's ts is still reported as is
        assert agent.core.clock.skewed == 1  # 5 s ahead is within the 60 s allowance
        assert agent.status()["streams"]["clock_skew"] == 1
        assert agent.stats.deadline_met == 4 and agent.stats.results == 5
    finally:
        await agent.stop()


async def test_arrival_deadlines_when_configured(repo: Path) -> None:
    agent, sent = await _core_agent(repo, slo_ms=100.0, deadline_from="arrival", inline_max_ms=0)
    try:
        agent.core.ingest(
            "sensors/s/d/imu", _window_payload(99, time.time() - 2.0), time.monotonic()
        )
        await agent.dispatcher.drain(within_s=5.0)
        await asyncio.sleep(0.05)
        (r,) = [json.loads(p) for _, p in sent]
        assert r["deadline_met"] is True and r["latency_ms"]["total"] < 100.0
        assert r["latency_ms"]["transit"] == 0.0
        assert agent.status()["deadline_from"] == "arrival"
    finally:
        await agent.stop()


async def test_late_batches_are_shed_inline_not_handed_to_the_loop(repo: Path) -> None:
    """Under a backlog every batch arrives late; it must still take the fastest path."""
    agent, sent = await _core_agent(repo, policy="slo-aware", slo_ms=100.0)
    try:
        agent.dispatcher.service.observe(1, 0.0002)  # cheap enough to run inline
        agent.core.ingest(
            "sensors/s/d/imu", _window_payload(99, time.time() - 5.0), time.monotonic()
        )
        agent.core.end_of_burst()  # on the MQTT thread: no loop iteration in between
        assert len(sent) == 1 and not agent.core._pending and agent.dispatcher.depth == 0
        r = json.loads(sent[0][1])
        assert r["reason"] == "shed:deadline-passed" and r["deadline_met"] is False
        assert agent.stats.routes["shed"] == 1 and agent.stats.reasons[r["reason"]] == 1
    finally:
        await agent.stop()
