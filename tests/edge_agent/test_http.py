"""HTTP API (health, readiness, status, metrics, SSE) of an in-process agent."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np

from tests.conftest import free_port
from tests.edge_agent.conftest import agent_settings, publisher, reading

STATUS_KEYS = {
    "agent_id",
    "site",
    "uptime_s",
    "broker_connected",
    "policy",
    "slo_ms",
    "model",
    "model_history",
    "rates",
    "latency_ms",
    "slo_attainment",
    "offload_share",
    "routes",
    "reasons",
    "queue_depth",
    "node",
    "deadletter",
    "alerts",
    "totals",
}


async def test_status_metrics_and_events(
    mosquitto: Any, repo: Path, topic_prefix: str, make_agent: Any, subscriber: Any, tmp_path: Path
) -> None:
    agent = await make_agent(
        agent_settings(mosquitto.url, repo, topic_prefix, journal_dir=tmp_path / "journal")
    )
    base = f"http://127.0.0.1:{agent.http_port}"
    results = subscriber(f"{topic_prefix}/results/#")
    pub = publisher(mosquitto.url)
    rng = np.random.default_rng(0)
    for seq in range(120):
        pub.publish(f"{topic_prefix}/sensors/s/d/x", reading(seq, rng.normal(size=6)), qos=1)
    pub.publish(f"{topic_prefix}/sensors/s/d/x", b"{oops", qos=1)
    await asyncio.to_thread(results.wait_for, 3, 10)
    pub.disconnect()
    pub.loop_stop()
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{base}/healthz") as r:
            assert r.status == 200
        async with http.get(f"{base}/readyz") as r:
            assert r.status == 200 and (await r.json())["ready"] is True
        async with http.get(f"{base}/api/status") as r:
            st = await r.json()
        async with http.get(f"{base}/metrics") as r:
            metrics = await r.text()
        async with http.get(f"{base}/api/events") as r:
            line = await asyncio.wait_for(r.content.readline(), 5)
        async with http.get(f"{base}/") as r:
            assert r.status == 200
    assert set(st) >= STATUS_KEYS
    assert st["model"]["name"] == "motion-edge" and st["model"]["version"] == 1
    assert st["totals"]["readings"] == 120 and st["totals"]["results"] == 3
    assert st["deadletter"] == {"total": 1, "by_reason": {"bad-json": 1}}
    # QoS-1 readings arrive one by one here; most take the fast path (acked after ingest).
    assert st["mqtt"]["messages"] >= 121 and 0 < st["mqtt"]["fast_path"] <= st["mqtt"]["messages"]
    assert st["mqtt"]["dropped_offline"] == st["mqtt"]["raw_overflows"] == 0
    # Every valid acknowledged reading was journaled (records also count answered marks).
    assert st["journal"]["records"] >= 120 and st["journal"]["write_errors"] == 0
    assert set(st["routes"]) == {"local", "remote", "hedge", "shed"}
    assert set(st["node"]) >= {
        "cpu_percent",
        "mem_percent",
        "rss_mb",
        "gpu_percent",
        "temperature_c",
    }
    assert st["latency_ms"]["p99"] > 0
    assert st["cloud"] == {
        "configured": False,
        "target": None,
        "model": None,
        "rtt_prior_ms": agent.settings.cloud_rtt_prior_ms,
        "breaker": "none",
    }
    assert st["deadline_from"] == "sensor" and st["streams"]["clock_skew"] == 0
    assert "edge_result_latency_seconds_bucket" in metrics
    assert 'edge_deadletter_total{reason="bad-json"} 1.0' in metrics
    assert line.startswith(b"data: ")
    assert json.loads(line[6:])["agent_id"] == agent.settings.agent_id


async def test_readyz_is_503_without_broker(repo: Path, topic_prefix: str, make_agent: Any) -> None:
    settings = agent_settings(f"mqtt://127.0.0.1:{free_port()}", repo, topic_prefix)
    from edge_agent.app.agent import EdgeAgent

    agent = EdgeAgent(settings, connect_wait_s=0.2)
    await agent.start()
    try:
        async with aiohttp.ClientSession() as http:
            base = f"http://127.0.0.1:{agent.http_port}"
            async with http.get(f"{base}/readyz") as r:
                body = await r.json()
                assert r.status == 503
            async with http.get(f"{base}/healthz") as r:
                assert r.status == 200
        assert body == {
            "ready": False,
            "model_loaded": True,
            "models": {"motion-edge": True},
            "broker_connected": False,
        }
    finally:
        await agent.stop()
