"""Fleet state from real heartbeats on a real broker: online, last will, missed beats."""

from __future__ import annotations

import json

import aiohttp

from cloud_gateway.service import Gateway, serve
from tests.cloud_gateway.conftest import auth
from tests.cloud_gateway.mqttutil import Peer, until


def _status(agent: str, version: int = 1, **metrics: float) -> dict:
    return {
        "agent_id": agent,
        "site": "site-a",
        "online": True,
        "ts": 0,
        "models": {"motion-edge": {"version": version, "state": "serving"}},
        "update": None,
        "health": {"ready": True, "broker": True, "cloud": "none"},
        "metrics": {
            "inferences": 10,
            "errors": 0,
            "nan_outputs": 0,
            "p50_ms": 1.0,
            "p99_ms": 2.0,
            "error_rate": 0.0,
            **metrics,
        },
    }


async def test_heartbeats_last_will_and_labels(
    gateway: Gateway, http: aiohttp.ClientSession, mosquitto, topic_prefix: str
) -> None:
    topics = gateway.topics
    will = (topics.status("a2"), b'{"agent_id": "a2", "online": false}')
    a1, a2 = Peer(mosquitto.url), Peer(mosquitto.url, will=will)
    try:
        a1.publish(topics.status("a1"), _status("a1", p99_ms=3.5))
        a2.publish(topics.status("a2"), _status("a2", version=2))
        a1.publish(topics.status("bad"), b"{not json")
        await until(lambda: len(gateway.fleet.all()) == 2, what="two agents")
        async with http.get(f"{gateway.url}/api/v1/fleet", headers=auth("viewer")) as resp:
            agents = {a["agent_id"]: a for a in await resp.json()}
        assert agents["a1"]["metrics"]["p99_ms"] == 3.5
        assert agents["a2"]["models"]["motion-edge"]["version"] == 2
        assert all(a["online"] for a in agents.values())
        await until(lambda: gateway.fleet.rejected == 1, what="malformed status counted")

        a2.drop()
        await until(lambda: not gateway.fleet.get("a2")["online"], what="last will")
        row = gateway.fleet.get("a2")
        assert '"version":2' in row["models"]  # what we knew survives the will

        async with http.put(
            f"{gateway.url}/api/v1/fleet/a1/labels",
            json={"labels": {"ring": "canary"}},
            headers=auth("admin"),
        ) as resp:
            assert resp.status == 200 and (await resp.json())["labels"] == {"ring": "canary"}
        a1.publish(topics.status("a1"), _status("a1"))
        await until(lambda: gateway.fleet.get("a1")["metrics"].find('"p99_ms":2.0') >= 0)
        assert gateway.fleet.get("a1")["labels"] == '{"ring":"canary"}'
    finally:
        a1.close()


async def test_missed_heartbeats_mark_offline_and_http_report(
    gateway_settings, http: aiohttp.ClientSession, mosquitto
) -> None:
    async with serve(gateway_settings(heartbeat_timeout_s=0.6)) as gw:
        peer = Peer(mosquitto.url)
        try:
            peer.publish(gw.topics.status("quiet"), _status("quiet"))
            await until(lambda: gw.fleet.find("quiet") and gw.fleet.get("quiet")["online"])
            await until(lambda: not gw.fleet.get("quiet")["online"], what="offline sweep")
        finally:
            peer.client.publish(gw.topics.status("quiet"), b"", retain=True).wait_for_publish(5)
            peer.close()
        own = {"Authorization": f"Bearer {gw.fleet.enrolments.enrol('h1', 'site-h')}"}
        url = f"{gw.url}/api/v1/fleet/h1/status"
        async with http.post(url, json=_status("h1"), headers=own) as resp:
            body = await resp.json()
            assert resp.status == 200 and body["online"], body
            assert body["site"] == "site-h"  # the enrolled site, whatever the body says
        async with http.post(url, json=_status("h2"), headers=own) as resp:
            assert resp.status == 400


def test_selector_by_site_label_and_id(tmp_path) -> None:
    from cloud_gateway.db import open_db
    from cloud_gateway.fleet import Fleet
    from cloud_gateway.schemas import Selector, StatusReport

    fleet = Fleet(open_db(tmp_path / "f.sqlite"), heartbeat_timeout_s=5)
    for agent, site, ring in (("a", "s1", "canary"), ("b", "s1", "main"), ("c", "s2", "main")):
        fleet.apply(StatusReport(agent_id=agent, site=site))
        fleet.set_labels(agent, {"ring": ring})
    fleet.apply(StatusReport(agent_id="d", site="s1", online=False))

    def ids(**kw: object) -> list[str]:
        return [r["agent_id"] for r in fleet.select(Selector(**kw))]

    assert ids() == ["a", "b", "c"]  # offline agents are never targeted
    assert ids(sites=["s1"]) == ["a", "b"]
    assert ids(labels={"ring": "main"}) == ["b", "c"]
    assert ids(sites=["s1"], labels={"ring": "main"}) == ["b"]
    assert ids(agents=["c", "d"]) == ["c"]


def test_a_heartbeat_keeps_what_it_does_not_own(tmp_path, database_url) -> None:
    """One upsert per heartbeat: labels (the admin's), first_seen and a site the report
    does not name survive it; a last will flips only the online flag. Runs on PostgreSQL
    too (EDGECLOUD_TEST_DATABASE=postgresql)."""
    from cloud_gateway.db import open_database
    from cloud_gateway.fleet import Fleet
    from cloud_gateway.schemas import StatusReport

    now = [1000.0]
    db = open_database(database_url or f"sqlite:///{tmp_path / 'f.sqlite'}")
    fleet = Fleet(db, heartbeat_timeout_s=5, clock=lambda: now[0])
    models = {"m": {"version": 2}}
    first = fleet.apply(StatusReport(agent_id="a", site="s1", models=models))
    assert (first["site"], first["first_seen"], first["labels"]) == ("s1", 1000.0, "{}")
    fleet.set_labels("a", {"ring": "canary"})
    now[0] = 1010.0
    row = fleet.apply(StatusReport(agent_id="a", models=models))  # no site this time
    assert (row["site"], row["first_seen"], row["last_seen"]) == ("s1", 1000.0, 1010.0)
    assert json.loads(row["labels"]) == {"ring": "canary"} and row["online"] == 1
    will = fleet.apply(StatusReport(agent_id="a", online=False))
    assert will["online"] == 0 and json.loads(will["models"]) == models
    assert fleet.get("a")["online"] == 0 and json.loads(fleet.get("a")["labels"])
    beat = db.execute("select beat from agents where agent_id = 'a'").fetchone()[0]
    assert beat == 2  # two heartbeats written; the will changed only the flag
    unknown = fleet.apply(StatusReport(agent_id="z", online=False))  # a will of a stranger
    assert unknown["online"] == 0 and unknown["first_seen"] == 1010.0
    db.close()


def test_queued_heartbeats_are_written_in_their_order(tmp_path, database_url) -> None:
    """MQTT heartbeats are written in batches (Fleet.flush): a last will and the heartbeat
    of the agent's reconnect in one batch keep their order; with enrolment on, an
    unenrolled sender is dropped and counted, the enrolled one kept."""
    from cloud_gateway.db import open_database
    from cloud_gateway.fleet import Fleet

    db = open_database(database_url or f"sqlite:///{tmp_path / 'f.sqlite'}")
    fleet = Fleet(db, heartbeat_timeout_s=5)
    beat = json.dumps({"agent_id": "a", "site": "s", "models": {"m": {"version": 1}}})
    will = json.dumps({"agent_id": "a", "online": False})
    assert fleet.receive("a", beat.encode()) and fleet.receive("a", will.encode())
    assert fleet.receive("a", beat.encode())  # back: online again, after its will
    assert not fleet.receive("a", b"{not json") and fleet.rejected == 1
    written = "select count(*) from agents where agent_id = 'a'"
    assert fleet.queued == 3 and db.execute(written).fetchone()[0] == 0  # not yet
    assert fleet.flush() == (3, 0) and fleet.queued == 0
    assert fleet.get("a")["online"] == 1
    assert fleet.receive("a", beat.encode()) and fleet.queued == 1
    assert fleet.find("a") is not None and fleet.queued == 0  # a read writes the queue
    assert fleet.receive("a", will.encode()) and fleet.flush() == (1, 0)
    assert fleet.get("a")["online"] == 0

    fleet.enrolments.enrol("b", "site-b")  # from now on only enrolled agents count
    for agent in ("b", "c"):
        assert fleet.receive(agent, json.dumps({"agent_id": agent, "site": "x"}).encode())
    assert fleet.flush() == (1, 1) and fleet.unenrolled == 1
    assert fleet.get("b")["site"] == "site-b" and fleet.find("c") is None
    db.close()


def test_an_older_heartbeat_never_overwrites_a_newer_one(tmp_path, database_url) -> None:
    """Replicas sharing the heartbeats (or two batches) may write an agent's heartbeats
    out of order: the agent's own ``ts`` decides; one more than STALE_S older is a clock
    set back on the agent and wins."""
    from cloud_gateway.db import open_database
    from cloud_gateway.fleet import STALE_S, Fleet
    from cloud_gateway.schemas import StatusReport

    db = open_database(database_url or f"sqlite:///{tmp_path / 'f.sqlite'}")
    fleet = Fleet(db, heartbeat_timeout_s=5)

    def beat(version: int, ts: float) -> dict:
        models = {"m": {"version": version}}
        return fleet.apply(StatusReport(agent_id="a", site="s", models=models, ts=ts))

    def serving() -> int:
        return json.loads(fleet.get("a")["models"])["m"]["version"]

    beat(1, 1000.0)
    assert json.loads(beat(2, 1010.0)["models"])["m"]["version"] == 2
    stale = beat(1, 1005.0)  # written late: ignored, the stored row is answered
    assert json.loads(stale["models"])["m"]["version"] == 2 and serving() == 2
    beat(3, 1010.0 - STALE_S - 1)  # the agent's clock was set back a lot: accepted
    assert serving() == 3
    beat(4, float("nan"))  # no usable ts: accepted, as from an agent without one
    assert serving() == 4
    db.close()
