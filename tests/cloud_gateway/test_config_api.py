"""The configuration twin's REST API on a real gateway (HTTP, SQLite, mosquitto): who may
set it, what it refuses, selectors, and the signed retained document it publishes."""

from __future__ import annotations

from typing import Any

import aiohttp

from bus.desired import verify_desired
from cloud_gateway.service import Gateway
from tests.cloud_gateway.conftest import auth, document, gateway_keys
from tests.cloud_gateway.mqttutil import Peer, until


def _heartbeat(agent_id: str, site: str, config: dict[str, Any] | None = None) -> dict[str, Any]:
    beat: dict[str, Any] = {"agent_id": agent_id, "site": site, "online": True, "models": {}}
    if config is not None:
        beat["config"] = config
    return beat


async def _agents(gw: Gateway, peer: Peer, *beats: dict[str, Any]) -> None:
    for beat in beats:
        peer.publish(gw.topics.status(beat["agent_id"]), beat)
    await until(lambda: all(gw.fleet.find(b["agent_id"]) for b in beats), what="heartbeats")


async def test_put_get_delete_and_the_signed_document(
    gateway: Gateway, http: aiohttp.ClientSession, mosquitto: Any, topic_prefix: str
) -> None:
    agent = f"{topic_prefix}-c1"
    peer = Peer(mosquitto.url)
    try:
        await _agents(gateway, peer, _heartbeat(agent, "s1"))
        peer.subscribe(gateway.topics.desired(agent))
        url = f"{gateway.url}/api/v1/fleet/{agent}/config"
        body = {"values": {"policy": "local-only", "slo_ms": 120}}
        async with http.put(url, json=body, headers=auth("viewer")) as r:
            assert r.status == 403
        for bad, needle in (
            ({"values": {"broker": "mqtt://x"}}, "not a live setting"),
            ({"values": {"slo_ms": {"a": 1}}}, "JSON scalar"),
            ({"values": {"slo_ms": 1}, "extra": 1}, "extra"),
        ):
            async with http.put(url, json=bad, headers=auth("admin")) as r:
                assert r.status == 400 and needle in await r.text(), await r.text()
        async with http.put(url, json=body, headers=auth("admin")) as r:
            assert r.status == 200, await r.text()
            view = await r.json()
        assert view["status"] == "unknown" and view["desired"]["values"] == body["values"]
        version = view["desired"]["version"]
        await until(lambda: peer.got(gateway.topics.desired(agent)), what="desired state")
        payload = peer.got(gateway.topics.desired(agent))[-1]
        signed = verify_desired(payload, gateway_keys(gateway))  # the section is signed
        assert signed.config is not None and signed.config.version == version
        assert signed.config.values == {"policy": "local-only", "slo_ms": 120}

        # The agent reports it: in sync; then refuses a newer one: refused, with reason.
        effective = {"policy": "local-only", "slo_ms": 120}
        report = {"version": version, "state": "ok", "effective": effective, "unknown": 1}
        peer.publish(gateway.topics.status(agent), _heartbeat(agent, "s1", report))
        async with http.get(url, headers=auth("viewer")) as r:
            assert r.status == 200
        await until(lambda: gateway.config.get(agent)["status"] == "in-sync", what="in sync")
        async with http.put(url, json={"values": {"slo_ms": 5}}, headers=auth("admin")) as r:
            newer = (await r.json())["desired"]["version"]
        assert newer > version
        reason = f"config version {newer} refused whole: slo_ms: too small"
        refused = report | {"state": "failed", "reason": reason, "refused_version": newer}
        peer.publish(gateway.topics.status(agent), _heartbeat(agent, "s1", refused))
        await until(lambda: gateway.config.get(agent)["status"] == "refused", what="refused")
        async with http.get(f"{gateway.url}/api/v1/fleet/{agent}", headers=auth("viewer")) as r:
            row = await r.json()
        assert row["config"]["reason"] == reason and row["config"]["status"] == "refused"

        async with http.delete(url, headers=auth("admin")) as r:
            assert r.status == 200 and (await r.json())["desired"] is None
        await until(
            lambda: document(peer.got(gateway.topics.desired(agent))[-1])["config"] is None,
            what="config: null",
        )
        async with http.get(
            f"{gateway.url}/api/v1/fleet/nobody/config", headers=auth("viewer")
        ) as r:
            assert r.status == 404
    finally:
        peer.close()


async def test_put_by_selector_reaches_only_the_matching_agents(
    gateway: Gateway, http: aiohttp.ClientSession, mosquitto: Any, topic_prefix: str
) -> None:
    ids = [f"{topic_prefix}-s{i}" for i in range(3)]
    peer = Peer(mosquitto.url)
    try:
        await _agents(
            gateway,
            peer,
            _heartbeat(ids[0], "north"),
            _heartbeat(ids[1], "north"),
            _heartbeat(ids[2], "south"),
        )
        labels = f"{gateway.url}/api/v1/fleet/{ids[1]}/labels"
        async with http.put(labels, json={"labels": {"ring": "beta"}}, headers=auth("admin")) as r:
            assert r.status == 200
        url = f"{gateway.url}/api/v1/config"
        body = {"selector": {"sites": ["north"]}, "values": {"max_wait_ms": 4}}
        async with http.put(url, json=body, headers=auth("admin")) as r:
            assert r.status == 200, await r.text()
            got = {v["agent_id"] for v in await r.json()}
        assert got == {ids[0], ids[1]}
        body = {"selector": {"labels": {"ring": "beta"}}, "values": {"heartbeat_s": 2}}
        async with http.put(url, json=body, headers=auth("admin")) as r:
            assert [v["agent_id"] for v in await r.json()] == [ids[1]]
        assert gateway.config.values_of(ids[0]) == {"max_wait_ms": 4}
        assert gateway.config.values_of(ids[1]) == {"heartbeat_s": 2}  # replaced, not merged
        assert gateway.config.values_of(ids[2]) is None
        body = {"selector": {"sites": ["nowhere"]}, "values": {"heartbeat_s": 2}}
        async with http.put(url, json=body, headers=auth("admin")) as r:
            assert r.status == 400 and "matches no agent" in await r.text()
        # Re-asserted with the models after a broker lost its retained store.
        assert gateway.engine.republish_all() >= 2
        openapi = gateway.openapi()
        assert "/api/v1/fleet/{agent_id}/config" in openapi["paths"]
        assert "put" in openapi["paths"]["/api/v1/config"]
    finally:
        peer.close()


async def test_manual_rollback_of_a_config_rollout_restores_each_previous_config(
    gateway: Gateway, http: aiohttp.ClientSession, mosquitto: Any, topic_prefix: str
) -> None:
    ids = [f"{topic_prefix}-r{i}" for i in range(2)]
    peer = Peer(mosquitto.url)
    try:
        await _agents(gateway, peer, *(_heartbeat(a, "west") for a in ids))
        gateway.config.set(ids[0], {"heartbeat_s": 3})  # ids[1] runs on its flags
        body = {
            "values": {"slo_ms": 80},
            "strategy": "all-at-once",
            "selector": {"sites": ["west"]},
            "gates": {"min_slo_attainment": 0.5},
        }
        async with http.post(
            f"{gateway.url}/api/v1/config/rollouts", json=body, headers=auth("viewer")
        ) as r:
            assert r.status == 403
        async with http.post(
            f"{gateway.url}/api/v1/config/rollouts", json=body, headers=auth("admin")
        ) as r:
            assert r.status == 201, await r.text()
            rid = (await r.json())["id"]
        await until(lambda: gateway.config.values_of(ids[1]) == {"slo_ms": 80}, what="issued")
        async with http.post(
            f"{gateway.url}/api/v1/config/rollouts", json=body, headers=auth("admin")
        ) as r:
            assert r.status == 409  # one config rollout at a time
        direct = f"{gateway.url}/api/v1/fleet/{ids[0]}/config"
        async with http.put(direct, json={"values": {}}, headers=auth("admin")) as r:
            assert r.status == 409 and rid in await r.text()  # the rollout owns it now
        url = f"{gateway.url}/api/v1/rollouts/{rid}/rollback"
        async with http.post(url, headers=auth("admin")) as r:
            assert r.status == 200, await r.text()
            row = await r.json()
        assert row["kind"] == "config" and row["state"] == "rolled_back"
        assert gateway.config.values_of(ids[0]) == {"heartbeat_s": 3}
        assert gateway.config.values_of(ids[1]) is None  # back to its flags
    finally:
        peer.close()
