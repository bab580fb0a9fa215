"""The rollout engine on a fake clock (tests/cloud_gateway/clocked.py): the suite's
database, real registry and fleet state, hand-made heartbeats, desired state captured
instead of published (the end-to-end runs with real agents are in test_rollouts.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from cloud_gateway.blobs import DirectoryBlobStore
from cloud_gateway.db import open_database
from cloud_gateway.registry import Registry
from cloud_gateway.rollouts import RolloutEngine
from cloud_gateway.schemas import RolloutInfo, RolloutRequest
from tests.cloud_gateway.clocked import beat, make_engine, wave_one_baking
from tests.cloud_gateway.conftest import document


async def test_engine_passes_a_wave_through_a_fleet_wide_burst(clocked: Any) -> None:
    engine, clock, published = clocked
    rid = await wave_one_baking(engine, clock)
    for t in range(2, 13, 2):  # the whole bake under a burst: everyone ~10x slower
        clock.now = 1000 + t
        for i in range(4):
            beat(engine, f"e{i}", 2 if i == 0 else 1, 40.0 + i, 1000 + 50 * t)
        await engine.tick()
        view = engine.get(rid)
        assert view["state"] == "running", view["reason"]
    assert view["current_wave"] == 2  # the bake passed: wave 2 issued
    passed = [e for e in view["events"] if e["kind"] == "wave-passed"]
    assert len(passed) == 1 and passed[0]["detail"]["wave"] == 1
    gate = passed[0]["detail"]["gate"]
    assert gate["basis"].startswith("control group of 3 agent(s) on v1: median p99 42.0 ms")
    assert gate["verdicts"]["e0"]["state"] == "pass"
    assert "p99 40.0 ms <= 126.0 ms" in gate["verdicts"]["e0"]["reason"]
    # Last wave: no control group left, each agent against its own pre-update p99.
    clock.now += 1
    for i in range(4):
        beat(engine, f"e{i}", 2, 5.0, 2000)
    await engine.tick()
    clock.now += 1
    for i in range(4):
        beat(engine, f"e{i}", 2, 5.0, 2100)
    await engine.tick()
    live = engine.get(rid)
    assert live["gate"]["control"] is None
    assert "no control group (every target has the new version" in live["gate"]["basis"]
    assert {a["gate"]["state"] for a in live["agents"]} == {"pass"}
    reasons = [a["gate"]["reason"] for a in live["agents"]]
    assert "its own pre-update (no control group) 4.0 ms;" in reasons[0]
    # Wave 2 was issued mid-burst: that is its agents' own pre-update p99.
    assert "its own pre-update (no control group) 41.0 ms;" in reasons[1]
    clock.now += 11
    await engine.tick()
    done = engine.get(rid)
    assert done["state"] == "succeeded"
    assert done["gate"]["basis"] == live["gate"]["basis"]  # as recorded in the history
    assert RolloutInfo.model_validate(done).gate is not None
    assert {t for t, _ in published} == {f"fleet/e{i}/desired" for i in range(4)}


async def test_engine_rolls_back_a_canary_ten_times_slower_than_its_control(
    clocked: Any,
) -> None:
    engine, clock, published = clocked
    rid = await wave_one_baking(engine, clock)
    clock.now += 2
    beat(engine, "e0", 2, 40.0, 1100)
    for i in (1, 2, 3):
        beat(engine, f"e{i}", 1, 4.0 + i / 10, 1100)
    await engine.tick()
    done = engine.get(rid)
    assert done["state"] == "rolled_back"
    assert done["reason"] == (
        "gate failed in wave 1: e0: p99 40.0 ms > 12.6 ms = max(3x, +5 ms) "
        "the control group's median 4.2 ms"
    )
    agents = {a["agent_id"]: a for a in done["agents"]}
    assert agents["e0"]["gate"]["state"] == "fail" and agents["e0"]["gate"]["gate"] == "p99"
    assert {agents[f"e{i}"]["state"] for i in (1, 2, 3)} == {"pending"}
    rolled = [e for e in done["events"] if e["kind"] == "rolled-back"]
    assert rolled[0]["detail"]["gate"]["control"]["agents"] == ["e1", "e2", "e3"]
    versions = [document(p)["models"]["motion-edge"]["version"] for _, p in published]
    assert [t for t, _ in published] == ["fleet/e0/desired"] * 2 and versions == [2, 1]
    listed = engine.list("motion-edge")
    assert listed[0]["gate"]["failure"] == done["reason"].removeprefix("gate failed in wave 1: ")


async def test_engine_rolls_back_when_evidence_never_arrives(clocked: Any) -> None:
    engine, clock, published = clocked
    rid = await wave_one_baking(engine, clock)
    # e0 serves v2 but gets almost no traffic: 5 results, never the 20 a verdict needs.
    for t in (5, 11, 40, 70):  # bake over at 1011; the 300 s default wave timeout after it
        clock.now = 1000 + t
        beat(engine, "e0", 2, 4.0, 1005)
        for i in (1, 2, 3):
            beat(engine, f"e{i}", 1, 4.0, 1000 + 10 * t)
        await engine.tick()
        live = engine.get(rid)
        assert live["state"] == "running" and live["current_wave"] == 1  # no verdict, no wave 2
        assert live["gate"]["verdicts"]["e0"] == {
            "state": "waiting",
            "gate": "",
            "reason": "5/20 new-version results before judging",
        }
    clock.now = 1000 + 11 + 301
    await engine.tick()
    done = engine.get(rid)
    assert done["state"] == "rolled_back"
    assert done["reason"] == (
        "wave 1: no gate verdict for 1 agent(s) within the 300 s wave timeout after the bake: "
        "e0: 5/20 new-version results before judging"
    )
    assert done["gate"]["failure"] == done["reason"]  # recorded with the evaluation
    states = {a["agent_id"]: a["state"] for a in done["agents"]}
    assert states == {"e0": "rolled_back", "e1": "pending", "e2": "pending", "e3": "pending"}
    versions = [document(p)["models"]["motion-edge"]["version"] for _, p in published]
    assert [t for t, _ in published] == ["fleet/e0/desired"] * 2 and versions == [2, 1]


async def test_engine_passes_idle_agents_only_when_allowed(clocked: Any) -> None:
    engine, clock, _ = clocked
    for i in range(3):
        beat(engine, f"e{i}", 1, 4.0, 1000)
    gates = {"allow_idle_agents": True, "idle_grace_s": 5.0}
    req = RolloutRequest(
        model="motion-edge", version=2, waves=["1", "100%"], bake_s=10.0, gates=gates
    )
    rid = engine.start(req)["id"]
    await engine.tick()
    clock.now += 1
    beat(engine, "e0", 2, 0.0, 1000)  # swapped, then no traffic at all
    await engine.tick()
    clock.now += 14  # bake over, grace not
    await engine.tick()
    assert engine.get(rid, detail=False)["current_wave"] == 1
    clock.now += 1
    await engine.tick()
    view = engine.get(rid)
    assert view["current_wave"] == 2, view["gate"]
    passed = next(e for e in view["events"] if e["kind"] == "wave-passed")
    verdict = passed["detail"]["gate"]["verdicts"]["e0"]
    assert (verdict["state"], verdict["gate"]) == ("idle", "idle")
    assert verdict["reason"].endswith("passes: allow_idle_agents is on")


# -- two writers: a manual rollback through another replica races the leader's tick ------
class _Replica:
    """A second gateway on the same database (its own connection), as in PostgreSQL mode."""

    def __init__(self, engine: RolloutEngine, db_url: str, tmp_path: Path) -> None:
        self.db = open_database(db_url)
        registry = Registry(
            self.db,
            DirectoryBlobStore(tmp_path / "blobs"),
            engine.registry.trusted_keys,
            max_bytes=1 << 28,
        )
        self.engine = make_engine(self.db, registry, engine.clock, [])  # type: ignore[arg-type]


async def _roll_back_during_the_tick(
    engine: RolloutEngine, other: RolloutEngine, rid: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The leader reads the running rollout, then the other replica rolls it back, then
    the leader decides on what it read."""
    observe = engine._observe

    def observe_then_race(row: dict[str, Any]) -> Any:
        out = observe(row)
        other.rollback("motion-edge", rid, reason="operator")
        return out

    monkeypatch.setattr(engine, "_observe", observe_then_race)
    await engine.tick()
    monkeypatch.setattr(engine, "_observe", observe)


async def test_a_manual_rollback_on_another_replica_beats_the_leaders_next_wave(
    clocked: Any, db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine, clock, _ = clocked
    rid = await wave_one_baking(engine, clock)
    other = _Replica(engine, db_url, tmp_path)
    for i in range(4):
        beat(engine, f"e{i}", 2 if i == 0 else 1, 4.0, 1500)
    clock.now += 11  # the bake is over: the leader's decision is "issue wave 2"
    await _roll_back_during_the_tick(engine, other.engine, rid, monkeypatch)
    view = engine.get(rid)
    assert view["state"] == "rolled_back" and view["reason"] == "manual rollback: operator"
    assert view["current_wave"] == 1  # wave 2 was never issued
    kinds = [e["kind"] for e in view["events"]]
    assert kinds.count("wave-issued") == 1 and kinds[-1] == "rolled-back", kinds
    assert {a["agent_id"]: a["state"] for a in view["agents"]} == {
        "e0": "rolled_back",
        "e1": "pending",
        "e2": "pending",
        "e3": "pending",
    }
    assert engine.desired_of("e0") == {"motion-edge": 1}
    other.db.close()


async def test_a_manual_rollback_on_another_replica_beats_the_leaders_success(
    clocked: Any, db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine, clock, _ = clocked
    for i in range(2):
        beat(engine, f"e{i}", 1, 4.0, 1000)
    req = RolloutRequest(model="motion-edge", version=2, waves=["100%"], bake_s=5.0)
    rid = engine.start(req)["id"]
    await engine.tick()  # the only wave, to both
    clock.now += 1
    for i in range(2):
        beat(engine, f"e{i}", 2, 4.0, 1200)
    await engine.tick()  # converged: baking
    other = _Replica(engine, db_url, tmp_path)
    clock.now += 6
    for i in range(2):
        beat(engine, f"e{i}", 2, 4.0, 1400)
    await _roll_back_during_the_tick(engine, other.engine, rid, monkeypatch)
    view = engine.get(rid)
    assert view["state"] == "rolled_back", view  # not "succeeded" over the rollback
    kinds = [e["kind"] for e in view["events"]]
    assert "succeeded" not in kinds and kinds[-1] == "rolled-back", kinds
    assert {a["state"] for a in view["agents"]} == {"rolled_back"}
    assert engine.desired_of("e0") == engine.desired_of("e1") == {"motion-edge": 1}
    other.db.close()
