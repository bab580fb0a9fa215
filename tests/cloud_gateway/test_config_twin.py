"""Issue 18's configuration twin, end to end: a real gateway (HTTP, SQLite, mosquitto)
changes the live settings of a real ``edge-agent`` process under steady load.

* SLO and policy change through ``PUT /api/v1/fleet/{agent}/config``: no window is lost
  or answered twice, the heartbeat carries the new values within one heartbeat interval
  of the PUT, and results decided afterwards name the new policy;
* an invalid document (one bad value beside a good one) is refused whole by the agent,
  with its reason in the fleet API, and the agent keeps its previous settings;
* removing the twin puts the agent back on its flags.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from cloud_gateway.service import Gateway
from tests.cloud_gateway.bundles import BundleSet
from tests.cloud_gateway.conftest import TOKENS, auth
from tests.cloud_gateway.test_own_models import ImuLoad, _push, _rollout
from tests.edge_agent.conftest import AgentProcess, Subscriber

HEARTBEAT_S = 1.0


def agent_args(
    gateway: Gateway, mosquitto: Any, prefix: str, agent_id: str, tmp: Path
) -> list[str]:
    token = tmp / f"{agent_id}.token"
    token.write_text(TOKENS["agent"])
    return [
        *("--agent-id", agent_id, "--site", "twin-site", "--broker", mosquitto.url),
        *("--repository", str(tmp / f"{agent_id}-repo"), "--topic-prefix", prefix),
        *("--topics-filter", f"{prefix}/sensors/{agent_id}/+/+", "--http-port", "0"),
        *("--heartbeat-s", str(HEARTBEAT_S), "--policy", "slo-aware"),
        *("--gateway-url", gateway.url, "--gateway-token-file", str(token)),
        *("--trusted-keys", str(gateway.settings.trusted_keys)),
        *("--gateway-key", str(gateway.settings.signing_key_path().with_suffix(".pub"))),
    ]


async def get_config(http: aiohttp.ClientSession, gw: Gateway, agent_id: str) -> dict[str, Any]:
    async with http.get(f"{gw.url}/api/v1/fleet/{agent_id}/config", headers=auth("viewer")) as r:
        assert r.status == 200, await r.text()
        body: dict[str, Any] = await r.json()
        return body


async def put_config(
    http: aiohttp.ClientSession, gw: Gateway, agent_id: str, values: dict[str, Any]
) -> dict[str, Any]:
    url = f"{gw.url}/api/v1/fleet/{agent_id}/config"
    async with http.put(url, json={"values": values}, headers=auth("admin")) as r:
        assert r.status == 200, await r.text()
        body: dict[str, Any] = await r.json()
        return body


async def config_until(
    http: aiohttp.ClientSession, gw: Gateway, agent_id: str, status: str, within_s: float
) -> dict[str, Any]:
    end = time.monotonic() + within_s
    while True:
        view = await get_config(http, gw, agent_id)
        if view["status"] == status:
            return view
        assert time.monotonic() < end, f"config not {status} within {within_s} s: {view}"
        await asyncio.sleep(0.05)


@pytest.mark.slow
async def test_slo_and_policy_change_live_under_load(
    gateway: Gateway, bundle_set: BundleSet, mosquitto: Any, topic_prefix: str, tmp_path: Path
) -> None:
    agent_id = f"{topic_prefix}-twin"
    agent = AgentProcess(agent_args(gateway, mosquitto, topic_prefix, agent_id, tmp_path))
    results = Subscriber(mosquitto.url, f"{topic_prefix}/results/{agent_id}/#")
    load = ImuLoad(mosquitto.url, f"{topic_prefix}/sensors/{agent_id}/watch/imu")
    try:
        await asyncio.to_thread(agent.wait_ready, 30.0)
        async with aiohttp.ClientSession() as http:
            await _push(http, gateway, bundle_set.good[1])
            done = await _rollout(
                http, gateway, "motion-edge", 1, agent_id, f"{topic_prefix}/sensors/{agent_id}/+/+"
            )
            assert done["state"] == "succeeded", done
            before = await get_config(http, gateway, agent_id)
            assert before["desired"] is None and before["reported"]["version"] == 0
            assert before["reported"]["effective"]["policy"] == "slo-aware"
            load.start()
            await asyncio.sleep(1.5)
            seq_before = load.seq

            # 1. SLO and policy, live.
            t0 = time.monotonic()
            view = await put_config(
                http, gateway, agent_id, {"policy": "local-only", "slo_ms": 250}
            )
            assert view["status"] == "pending" and view["desired"]["values"]["slo_ms"] == 250
            synced = await config_until(http, gateway, agent_id, "in-sync", HEARTBEAT_S)
            took = time.monotonic() - t0
            seq_applied = load.seq
            reported = synced["reported"]
            assert reported["version"] == synced["desired"]["version"]
            assert reported["effective"]["policy"] == "local-only"
            assert reported["effective"]["slo_ms"] == 250
            assert reported["overrides"] == ["policy", "slo_ms"]
            assert took < HEARTBEAT_S
            await asyncio.sleep(1.0)

            # 2. One bad value refuses the whole document; the agent keeps what it runs.
            bad = await put_config(http, gateway, agent_id, {"policy": "cloud-only", "slo_ms": -5})
            refused = await config_until(http, gateway, agent_id, "refused", 5.0)
            assert "slo_ms" in refused["reason"] and "refused whole" in refused["reason"]
            assert refused["reported"]["refused_version"] == bad["desired"]["version"]
            assert refused["reported"]["effective"]["policy"] == "local-only"
            assert refused["reported"]["effective"]["slo_ms"] == 250
            async with http.get(f"{gateway.url}/api/v1/fleet", headers=auth("viewer")) as r:
                row = next(a for a in await r.json() if a["agent_id"] == agent_id)
            assert row["config"]["status"] == "refused"
            assert row["config"]["reason"] == refused["reason"]
            await asyncio.sleep(1.0)
            seq_refused = load.seq
            await asyncio.sleep(0.5)

            # 3. No twin: back to the flags.
            async with http.delete(
                f"{gateway.url}/api/v1/fleet/{agent_id}/config", headers=auth("admin")
            ) as r:
                assert r.status == 200, await r.text()
            flags = await config_until(http, gateway, agent_id, "in-sync", 5.0)
            assert flags["reported"]["version"] == 0
            assert flags["reported"]["effective"]["policy"] == "slo-aware"
            assert flags["reported"]["effective"]["slo_ms"] is None
        sent = await asyncio.to_thread(load.stop)
        want = list(range(99, sent, 10))
        await asyncio.to_thread(results.wait_for, len(want), 30.0)
        await asyncio.sleep(0.5)  # a duplicate would arrive now
        status = agent.status()
    finally:
        load.stop()
        agent.stop()
        results.close()
    got = results.json()
    assert sorted(r["seq"] for r in got) == want  # zero lost, none twice
    assert all(r["output"].get("error") is None for r in got)
    by_seq = {r["seq"]: r for r in got}
    early = [by_seq[s]["reason"] for s in want if s < seq_before]
    assert early and "policy-local-only" not in early
    # Decided after the agent reported the change (and through the refused document).
    after = [by_seq[s]["reason"] for s in want if seq_applied + 20 <= s < seq_refused]
    assert len(after) > 20 and set(after) == {"policy-local-only"}
    assert status["models"][0]["name"] == "motion-edge"


async def _follow(http: aiohttp.ClientSession, gw: Gateway, rid: str, within_s: float) -> Any:
    end = time.monotonic() + within_s
    while True:
        async with http.get(f"{gw.url}/api/v1/rollouts/{rid}", headers=auth("viewer")) as r:
            row = await r.json()
        if row["state"] != "running":
            return row
        assert time.monotonic() < end, f"rollout {rid} still running: {row}"
        await asyncio.sleep(0.2)


@pytest.mark.slow
async def test_config_rollout_that_breaks_the_slo_is_rolled_back(
    gateway: Gateway, bundle_set: BundleSet, mosquitto: Any, topic_prefix: str, tmp_path: Path
) -> None:
    """Two agents under load; a canary config rollout sets an SLO of 10 us, which no
    result can meet (its clock starts at the sensor; 0.5 ms was met by ~90 % of results on
    a quiet machine: p50 0.46 ms over loopback): the first wave's agent fails the
    SLO-attainment gate and is put back on its previous config; the second never gets it.
    Then a sane SLO rolls out through both waves."""
    ids = [f"{topic_prefix}-cfg-a", f"{topic_prefix}-cfg-b"]
    agents = [AgentProcess(agent_args(gateway, mosquitto, topic_prefix, a, tmp_path)) for a in ids]
    loads = [ImuLoad(mosquitto.url, f"{topic_prefix}/sensors/{a}/watch/imu") for a in ids]
    gates = {"min_slo_attainment": 0.9, "min_samples": 20, "allow_idle_agents": False}
    try:
        for agent in agents:
            await asyncio.to_thread(agent.wait_ready, 30.0)
        async with aiohttp.ClientSession() as http:
            await _push(http, gateway, bundle_set.good[1])
            for a in ids:
                done = await _rollout(
                    http, gateway, "motion-edge", 1, a, f"{topic_prefix}/sensors/{a}/+/+"
                )
                assert done["state"] == "succeeded", done
            for load in loads:
                load.start()
            await asyncio.sleep(1.0)
            body = {
                "values": {"slo_ms": 0.01},
                "waves": ["1", "100%"],
                "selector": {"agents": ids},
                "bake_s": 1.0,
                "wave_timeout_s": 20,
                "gates": gates,
            }
            url = f"{gateway.url}/api/v1/config/rollouts"
            async with http.post(url, json=body, headers=auth("admin")) as r:
                assert r.status == 201, await r.text()
                started = await r.json()
            assert started["kind"] == "config" and started["config"] == {"slo_ms": 0.01}
            bad = await _follow(http, gateway, started["id"], 40.0)
            assert bad["state"] == "rolled_back", bad
            assert "SLO attainment" in bad["reason"] and ids[0] in bad["reason"], bad["reason"]
            assert bad["gate"]["verdicts"][ids[0]]["gate"] == "slo"
            touched = {a["agent_id"]: a["state"] for a in bad["agents"]}
            assert touched == {ids[0]: "rolled_back", ids[1]: "pending"}, bad
            back = await config_until(http, gateway, ids[0], "in-sync", 5.0)
            assert back["desired"] is None and back["reported"]["effective"]["slo_ms"] is None
            untouched = await get_config(http, gateway, ids[1])
            assert untouched["desired"] is None and untouched["reported"]["version"] == 0

            body["values"] = {"slo_ms": 400, "policy": "local-only"}
            async with http.post(url, json=body, headers=auth("admin")) as r:
                assert r.status == 201, await r.text()
                good_id = (await r.json())["id"]
            good = await _follow(http, gateway, good_id, 40.0)
            assert good["state"] == "succeeded", good
            for a in ids:
                view = await config_until(http, gateway, a, "in-sync", 5.0)
                assert view["reported"]["version"] == good["version"]
                assert view["reported"]["effective"]["slo_ms"] == 400
    finally:
        for load in loads:
            load.stop()
        for agent in agents:
            agent.stop()
