"""Per-agent identity on the gateway (issue 16, attack 2) and its bad-input edges (item 12):
a real gateway on a real broker, tokens issued by enrolment."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest

from bus.desired import verify_desired
from cloud_gateway.service import Gateway, serve
from tests.cloud_gateway.bundles import MODEL, BundleSet
from tests.cloud_gateway.conftest import TOKENS, auth, gateway_keys, push
from tests.cloud_gateway.mqttutil import Peer, until


def _status(agent: str, **extra: Any) -> dict[str, Any]:
    return {
        "agent_id": agent,
        "site": "claimed-site",
        "online": True,
        "models": {MODEL: {"version": 2, "state": "serving"}},
        "update": {"model": MODEL, "version": 2, "state": "ok"},
        "metrics": {"inferences": 100, "errors": 0, "nan_outputs": 0, "p99_ms": 5.0},
        **extra,
    }


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_an_agent_token_reports_only_for_its_own_agent(
    gateway: Gateway, http: aiohttp.ClientSession, bundle_set: BundleSet
) -> None:
    a1 = gateway.fleet.enrolments.enrol("a1", "s1")
    a2 = gateway.fleet.enrolments.enrol("a2", "s2")
    url = f"{gateway.url}/api/v1/fleet/{{}}/status"
    async with http.post(url.format("a1"), json=_status("a1"), headers=_bearer(a1)) as resp:
        body = await resp.json()
        assert resp.status == 200, body
        assert body["site"] == "s1"  # the enrolled site, not the claimed one
    # Issue 16: "the agent token can report for any agent id".
    async with http.post(url.format("a2"), json=_status("a2"), headers=_bearer(a1)) as resp:
        body = await resp.json()
        assert resp.status == 403
        assert body["message"] == "this token belongs to agent 'a1'; it may not report for 'a2'"
    async with http.post(url.format("a2"), json=_status("a2"), headers=auth("agent")) as resp:
        body = await resp.json()
        assert resp.status == 403
        assert body["message"].startswith("only an enrolled agent's own token may report")
    assert gateway.fleet.find("a2") is None
    # Its own token downloads bundles, and does nothing else.
    await push(http, gateway, bundle_set.good[2])
    async with http.get(gateway.bundle_url(MODEL, 2), headers=_bearer(a2)) as resp:
        assert resp.status == 200
    async with http.get(f"{gateway.url}/api/v1/fleet", headers=_bearer(a2)) as resp:
        assert resp.status == 403
        assert "may only report its own status and download bundles" in (await resp.text())


async def test_rotation_and_revocation(gateway: Gateway, http: aiohttp.ClientSession) -> None:
    old = gateway.fleet.enrolments.enrol("r1", "s1")
    new = gateway.fleet.enrolments.enrol("r1", "s1")  # enrolling again rotates
    url = f"{gateway.url}/api/v1/fleet/r1/status"
    async with http.post(url, json=_status("r1"), headers=_bearer(old)) as resp:
        assert resp.status == 401
    async with http.post(url, json=_status("r1"), headers=_bearer(new)) as resp:
        assert resp.status == 200
    gateway.fleet.enrolments.revoke("r1")
    async with http.post(url, json=_status("r1"), headers=_bearer(new)) as resp:
        assert resp.status == 401 and (await resp.json())["message"] == "unknown bearer token"


async def test_heartbeats_never_change_labels(
    gateway: Gateway, http: aiohttp.ClientSession, mosquitto: Any
) -> None:
    token = gateway.fleet.enrolments.enrol("l1", "s1")
    url = f"{gateway.url}/api/v1/fleet/l1/status"
    async with http.post(url, json=_status("l1"), headers=_bearer(token)) as resp:
        assert resp.status == 200
    labels = f"{gateway.url}/api/v1/fleet/l1/labels"
    async with http.put(labels, json={"labels": {"ring": "main"}}, headers=auth("admin")) as resp:
        assert resp.status == 200
    forged = _status("l1", labels={"ring": "canary"})
    async with http.post(url, json=forged, headers=_bearer(token)) as resp:
        assert resp.status == 200 and (await resp.json())["labels"] == {"ring": "main"}
    peer = Peer(mosquitto.url)
    seen = gateway.fleet.get("l1")["last_seen"]
    try:
        peer.publish(gateway.topics.status("l1"), _status("l1", labels={"ring": "x"}))
        await until(lambda: gateway.fleet.get("l1")["last_seen"] > seen, what="MQTT heartbeat")
        assert json.loads(gateway.fleet.get("l1")["labels"]) == {"ring": "main"}
    finally:
        peer.publish(gateway.topics.status("l1"), b"")
        peer.close()


async def test_status_of_unenrolled_ids_is_dropped_and_counted(
    gateway: Gateway, mosquitto: Any, caplog: pytest.LogCaptureFixture
) -> None:
    gateway.fleet.enrolments.enrol("real-1", "s1")
    peer = Peer(mosquitto.url)
    caplog.set_level(logging.WARNING, "cloud_gateway.fleet")
    try:
        for i in range(4):  # issue 16: four invented agents, "serving v2, p99 5 ms"
            peer.publish(gateway.topics.status(f"ghost-{i}"), _status(f"ghost-{i}"))
            peer.publish(gateway.topics.status(f"ghost-{i}"), _status(f"ghost-{i}"))
        peer.publish(gateway.topics.status("real-1"), _status("real-1"))
        await until(lambda: gateway.fleet.find("real-1"), what="the enrolled agent")
        await until(lambda: gateway.fleet.unenrolled == 8, what="ghosts counted")
        assert [r["agent_id"] for r in gateway.fleet.all()] == ["real-1"]
        ghosts = [r.getMessage() for r in caplog.records if "ghost-" in r.getMessage()]
        assert len(ghosts) == 4  # once per id, not per message
        assert ghosts[0] == (
            "dropping status: agent 'ghost-0' is not enrolled (cloud-gateway fleet enrol); "
            "its status is ignored"
        )
    finally:
        for agent in ("real-1", *(f"ghost-{i}" for i in range(4))):
            peer.publish(gateway.topics.status(agent), b"")
        peer.close()


def _fresh(gw: Gateway, peer: Peer) -> Callable[[], list[Any]]:
    """The signed documents of d1 that name this gateway's URL (not a restart's replay)."""

    def check() -> list[Any]:
        docs = [verify_desired(p, gateway_keys(gw)) for p in peer.got(gw.topics.desired("d1"))]
        return [d for d in docs if d.models[MODEL].url == gw.bundle_url(MODEL, 2)]

    return check


async def test_desired_state_is_signed_with_a_sequence_that_survives_restarts(
    gateway_settings: Callable[..., Any],
    http: aiohttp.ClientSession,
    bundle_set: BundleSet,
    mosquitto: Any,
) -> None:
    settings = gateway_settings()
    sequences = []
    for _ in range(2):
        async with serve(settings) as gw:
            await push(http, gw, bundle_set.good[2])
            peer = Peer(mosquitto.url)
            peer.subscribe(gw.topics.desired("d1"))
            try:
                gw.engine.desired.set("d1", MODEL, gw.registry.get(MODEL, 2), "r", 1.0)

                doc = (await until(_fresh(gw, peer), what="the signed document"))[-1]
                assert (doc.target, doc.target_kind) == ("d1", "agent")
                sequences.append(doc.sequence)
            finally:
                peer.publish(gw.topics.desired("d1"), b"")
                peer.close()
    assert sequences[1] > sequences[0] >= 1


@pytest.mark.parametrize("version", ["%201", "\uff11", "1_0", "+1", "0", "99999999999999999999"])
async def test_version_path_segments_are_ascii_digits_in_range(
    gateway: Gateway, http: aiohttp.ClientSession, version: str
) -> None:
    url = f"{gateway.url}/api/v1/models/{MODEL}/versions/{version}"
    async with http.get(url, headers=auth("viewer")) as resp:
        body = await resp.json()
        assert resp.status == 400, body
        assert body["message"] == "version must be an integer from 1 to 2147483647"


async def test_deep_or_huge_json_bodies_are_400(
    gateway: Gateway, http: aiohttp.ClientSession
) -> None:
    url = f"{gateway.url}/api/v1/rollouts"
    deep = "[" * 100_000 + "]" * 100_000
    async with http.post(url, data=deep, headers=auth("admin")) as resp:
        body = await resp.json()
        assert resp.status == 400 and body["message"] == "request body is nested too deeply"
    huge = {"model": MODEL, "version": 10**20}
    async with http.post(url, json=huge, headers=auth("admin")) as resp:
        body = await resp.json()
        assert resp.status == 400 and "version" in body["message"], body


async def test_an_oversized_authorization_header_is_not_logged(
    gateway: Gateway, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    secret = "SECRET-" + TOKENS["admin"] + "x" * 9000
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
    writer.write(
        f"GET /api/v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {secret}\r\n\r\n".encode()
    )
    await writer.drain()
    head = await reader.read(64)
    writer.close()
    assert head.startswith(b"HTTP/1.0 400") or head.startswith(b"HTTP/1.1 400"), head
    await asyncio.sleep(0.1)
    text = "\n".join(r.getMessage() + str(r.exc_text or "") for r in caplog.records)
    assert "request bytes not logged" in text
    assert "SECRET" not in text and TOKENS["admin"] not in text


async def test_rollout_topics_reach_the_signed_document(
    gateway: Gateway, http: aiohttp.ClientSession, bundle_set: BundleSet, mosquitto: Any
) -> None:
    token = gateway.fleet.enrolments.enrol("t1", "s1")
    async with http.post(
        f"{gateway.url}/api/v1/fleet/t1/status", json=_status("t1"), headers=_bearer(token)
    ) as resp:
        assert resp.status == 200
    await push(http, gateway, bundle_set.good[2])
    peer = Peer(mosquitto.url)
    peer.subscribe(gateway.topics.desired("t1"))
    body = {"model": MODEL, "version": 2, "strategy": "all-at-once", "topics": "sensors/s1/+/acc"}
    try:
        async with http.post(
            f"{gateway.url}/api/v1/rollouts", json=body, headers=auth("admin")
        ) as resp:
            assert resp.status == 201, await resp.text()
        payload = (await until(lambda: peer.got(gateway.topics.desired("t1"))))[-1]
        wanted = verify_desired(payload, gateway_keys(gateway)).models[MODEL]
        assert (wanted.version, wanted.topics, wanted.state) == (2, "sensors/s1/+/acc", "serving")
        for bad in (" 2", "2", 2.0, True):
            async with http.post(
                f"{gateway.url}/api/v1/rollouts",
                json={**body, "version": bad},
                headers=auth("admin"),
            ) as resp:
                assert resp.status == 400, bad
    finally:
        peer.publish(gateway.topics.desired("t1"), b"")
        peer.publish(gateway.topics.status("t1"), b"")
        peer.close()


def test_broker_config_follows_the_agents_topic_prefix(tmp_path: Any) -> None:
    from cloud_gateway.cli import main

    db = str(tmp_path / "g.sqlite")
    assert main(["fleet", "enrol", "n1", "--site", "s1", "--db-path", db]) == 0
    out = tmp_path / "broker"
    args = ["fleet", "broker-config", "--out", str(out), "--db-path", db, "--topic-prefix", "t"]
    assert main(args) == 0
    acl = (out / "acl").read_text()
    assert "user n1\ntopic write t/fleet/n1/status\ntopic read t/fleet/n1/desired\n" in acl
    assert "topic read t/sensors/s1/#" in acl and "topic write t/results/s1/#" in acl
    users = [line.split(":", 1)[0] for line in (out / "passwd").read_text().splitlines()]
    assert users == ["cloud-gateway", "n1"]
    assert (out / "passwd").stat().st_mode & 0o777 == 0o600
    assert main(["fleet", "enrol", "n2", "--site", "s2", "--db-path", db]) == 0
    assert main([*args, "--site", "s2"]) == 0
    users = [line.split(":", 1)[0] for line in (out / "passwd").read_text().splitlines()]
    assert users == ["cloud-gateway", "n2"] and "user n1" not in (out / "acl").read_text()
    assert main(["fleet", "revoke", "n1", "--db-path", db]) == 0
    assert main(["fleet", "revoke", "n1", "--db-path", db]) == 1  # one-line error, exit 1
    assert main(["fleet", "enrol", "cloud-gateway", "--site", "s1", "--db-path", db]) == 1
