"""The gateway's probe and scrape endpoints on a real gateway (HTTP + mosquitto + SQLite):
``/readyz`` follows the database, the broker and the engine; ``/metrics`` parses with
prometheus_client's own parser and has the documented names, types and labels."""

from __future__ import annotations

import re
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from cloud_gateway.service import Gateway
from tests.cloud_gateway.conftest import auth
from tests.cloud_gateway.mqttutil import Peer, until
from tests.manifests.promql import check_queries

#: name -> type, as prometheus_client's parser reports them (counters without _total).
EXPECTED = {
    "gateway_heartbeats": "counter",
    "gateway_agents": "gauge",
    "gateway_agents_online": "gauge",
    "gateway_rollouts": "gauge",
    "gateway_broker_connected": "gauge",
    "gateway_leader": "gauge",
    "gateway_engine_tick_duration_seconds": "histogram",
    "gateway_http_requests": "counter",
    "gateway_http_request_duration_seconds": "histogram",
    "process_cpu_seconds": "counter",
    "process_resident_memory_bytes": "gauge",
    "process_open_fds": "gauge",
    "python_info": "gauge",
}


async def _scrape(http: aiohttp.ClientSession, gw: Gateway) -> dict[str, Any]:
    async with http.get(f"{gw.url}/metrics") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain; version=")
        text = await resp.text()
    return {f.name: f for f in text_string_to_metric_families(text)}


def _value(family: Any, sample_name: str, **labels: str) -> float:
    for s in family.samples:
        if s.name == sample_name and all(s.labels.get(k) == v for k, v in labels.items()):
            return s.value
    raise AssertionError(f"no sample {sample_name}{labels} in {family.samples}")


async def test_readyz_follows_db_broker_and_engine(
    gateway: Gateway, http: aiohttp.ClientSession
) -> None:
    async with http.get(f"{gateway.url}/readyz") as resp:
        body = await resp.json()
        assert resp.status == 200, body
    assert body == {
        "ready": True,
        "db_open": True,
        "broker_connected": True,
        "engine_running": True,
        "leader": True,  # the only replica
        "database": gateway.db.dialect,
    }
    # The engine task dies (a bug that escaped its loop): no longer ready, still alive.
    assert gateway.engine_task is not None
    gateway.engine_task.cancel()
    await until(lambda: gateway.engine_task.done(), what="engine stopped")  # type: ignore[union-attr]
    async with http.get(f"{gateway.url}/readyz") as resp:
        assert resp.status == 503
        body = await resp.json()
    assert body["ready"] is False and body["engine_running"] is False and body["db_open"]
    async with http.get(f"{gateway.url}/healthz") as resp:
        assert resp.status == 200


async def test_metrics_parse_with_names_types_and_counts(
    gateway: Gateway, http: aiohttp.ClientSession, mosquitto: Any
) -> None:
    topics = gateway.topics
    peer = Peer(mosquitto.url)
    try:
        peer.publish(topics.status("ops-a"), {"agent_id": "ops-a", "site": "s1"})
        peer.publish(topics.status("ops-b"), b"{not json")
        peer.publish(topics.status("ops-c"), {"agent_id": "someone-else"})
        await until(lambda: gateway.fleet.find("ops-a") is not None, what="heartbeat stored")
        await until(lambda: gateway.fleet.rejected >= 2, what="bad heartbeats counted")
    finally:
        peer.close()
    url = f"{gateway.url}/api/v1/fleet/ops-d/status"
    # Only an enrolled agent's own token may report over HTTP (issue 16).
    token = gateway.fleet.enrolments.enrol("ops-d", "s1")  # the loop thread owns SQLite
    own = {"Authorization": f"Bearer {token}"}
    async with http.post(url, json={"agent_id": "ops-d"}, headers=own) as resp:
        assert resp.status == 200
    async with http.post(url, json={"agent_id": "ops-x"}, headers=own) as resp:
        assert resp.status == 400
    async with http.get(f"{gateway.url}/api/v1/fleet/ops-a", headers=auth("viewer")) as resp:
        assert resp.status == 200
    async with http.get(f"{gateway.url}/no/such/page") as resp:
        assert resp.status == 404
    await until(lambda: gateway.metrics.engine_tick.collect()[0].samples, what="a tick")

    families = await _scrape(http, gateway)
    for name, kind in EXPECTED.items():
        assert name in families, f"{name} missing from /metrics"
        assert families[name].type == kind, (name, families[name].type)

    hb = families["gateway_heartbeats"]
    assert _value(hb, "gateway_heartbeats_total", transport="mqtt", outcome="ingested") == 1
    assert _value(hb, "gateway_heartbeats_total", transport="mqtt", outcome="rejected") == 2
    assert _value(hb, "gateway_heartbeats_total", transport="http", outcome="ingested") == 1
    assert _value(hb, "gateway_heartbeats_total", transport="http", outcome="rejected") == 1
    assert _value(families["gateway_agents_online"], "gateway_agents_online") == 2
    assert _value(families["gateway_agents"], "gateway_agents", online="true") == 2
    rollouts = families["gateway_rollouts"]
    states = {s.labels["state"] for s in rollouts.samples}
    assert states == {"running", "succeeded", "rolled_back"}
    assert _value(families["gateway_broker_connected"], "gateway_broker_connected") == 1
    assert _value(families["gateway_leader"], "gateway_leader") == 1
    ticks = families["gateway_engine_tick_duration_seconds"]
    assert _value(ticks, "gateway_engine_tick_duration_seconds_count") >= 1

    # Route templates, never raw paths (one series per agent would be unbounded).
    req = families["gateway_http_requests"]
    routes = {s.labels["route"] for s in req.samples}
    assert "/api/v1/fleet/{agent_id}/status" in routes and "/api/v1/fleet/{agent_id}" in routes
    assert not any("ops-" in r for r in routes), routes
    status_route = "/api/v1/fleet/{agent_id}/status"
    total = "gateway_http_requests_total"
    assert _value(req, total, route=status_route, method="POST", status="200") == 1
    assert _value(req, total, route=status_route, method="POST", status="400") == 1
    assert _value(req, total, route="unmatched", method="GET", status="404") == 1
    assert _value(families["process_cpu_seconds"], "process_cpu_seconds_total") > 0

    # The scrape itself is counted by the next one.
    families = await _scrape(http, gateway)
    req = families["gateway_http_requests"]
    assert _value(req, total, route="/metrics", method="GET", status="200") == 1


async def test_dashboard_rollout_queries_match_a_real_scrape(
    gateway: Gateway, http: aiohttp.ClientSession
) -> None:
    async with http.get(f"{gateway.url}/metrics") as resp:
        text = await resp.text()
    assert check_queries(text, re.compile(r"\bgateway_[a-z0-9_]+\b")) >= 3
