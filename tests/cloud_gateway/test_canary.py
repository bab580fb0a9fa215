"""Pure rollout logic with a fake clock: wave plans, the step machine and its gate report
(the per-agent gates themselves are in test_gates.py)."""

from __future__ import annotations

from typing import Any

import pytest

from cloud_gateway import canary
from cloud_gateway.canary import Fail, Issue, MarkConverged, Plan, Succeed
from cloud_gateway.gates import Baseline, GateState, Observation
from cloud_gateway.schemas import Gates
from models.errors import InvalidInput
from offload.desired import UpdateState

AGENTS = [f"a{i:02d}" for i in range(20)]


def test_wave_plans() -> None:
    waves = canary.plan_waves(AGENTS, ["10%", "50%", "100%"], "canary")
    assert [len(w) for w in waves] == [2, 8, 10]
    assert [a for w in waves for a in w] == AGENTS
    assert [len(w) for w in canary.plan_waves(AGENTS, ["1", "5"], "canary")] == [1, 4, 15]
    assert canary.plan_waves(AGENTS, ["10%"], "all-at-once") == [AGENTS]
    assert [len(w) for w in canary.plan_waves(AGENTS[:3], ["1%", "2%"], "canary")] == [1, 2]
    assert [len(w) for w in canary.plan_waves(AGENTS[:2], ["5", "100%"], "canary")] == [2]
    for bad in (["0%"], ["150%"], ["x"], ["0"], ["1.5"]):
        with pytest.raises(InvalidInput):
            canary.plan_waves(AGENTS, bad, "canary")
    with pytest.raises(InvalidInput):
        canary.plan_waves([], ["100%"], "canary")


def _obs(version: int, **metrics: float) -> Observation:
    return Observation(online=True, version=version, update=None, metrics=dict(metrics))


def _plan(**kw: object) -> Plan:
    values: dict = dict(
        rollout_id="r",
        version=2,
        waves=[["a"], ["b", "c"]],
        current_wave=-1,
        wave_started_at=None,
        wave_converged_at=None,
        bake_s=10.0,
        wave_timeout_s=60.0,
        gates=Gates(),
    )
    values.update(kw)
    return Plan(**values)


def test_step_through_a_healthy_canary() -> None:
    assert canary.step(_plan(), {}, {}, 0.0) == Issue(0, ["a"])
    p = _plan(current_wave=0, wave_started_at=0.0)
    assert canary.step(p, {"a": _obs(1)}, {}, 5.0) is None
    assert canary.step(p, {"a": _obs(2)}, {}, 6.0) == MarkConverged(0)
    p = _plan(current_wave=0, wave_started_at=0.0, wave_converged_at=6.0)
    assert canary.step(p, {"a": _obs(2)}, {}, 15.0) is None  # baking
    assert canary.step(p, {"a": _obs(2)}, {}, 16.0) == Issue(1, ["b", "c"])
    p = _plan(current_wave=1, wave_started_at=16.0, wave_converged_at=20.0)
    obs = {k: _obs(2) for k in "abc"}
    assert canary.step(p, obs, {}, 30.0) == Succeed()


def test_step_fails_and_rolls_back_issued_waves_only() -> None:
    p = _plan(current_wave=0, wave_started_at=0.0, wave_converged_at=1.0)
    action = canary.step(p, {"a": _obs(2, nan_outputs=5)}, {}, 2.0)
    assert isinstance(action, Fail) and action.rollback == ["a"]
    assert "wave 1" in action.reason and "NaN" in action.reason
    p = _plan(current_wave=0, wave_started_at=0.0)
    action = canary.step(p, {"a": _obs(1)}, {}, 61.0)
    assert isinstance(action, Fail) and "did not converge" in action.reason


def test_min_inferences_holds_the_bake() -> None:
    p = _plan(
        current_wave=1, wave_started_at=0.0, wave_converged_at=0.0, gates=Gates(min_inferences=10)
    )
    obs = {k: _obs(2, inferences=5) for k in "abc"}
    base = {k: Baseline(inferences=0) for k in "abc"}
    assert canary.step(p, obs, base, 100.0) is None
    obs = {k: _obs(2, inferences=20) for k in "abc"}
    assert canary.step(p, obs, base, 100.0) == Succeed()


def _busy(version: int, p99_ms: float, **metrics: Any) -> Observation:
    m = {"inferences": 500, "errors": 0, "nan_outputs": 0, "p99_ms": p99_ms} | metrics
    return Observation(online=True, version=version, metrics=m, seen_at=10.0)


# Wave 1 = "a" (converged at t=6, settled with 4 ms p99), "b" and "c" still on v1.
BAKING = dict(current_wave=0, wave_started_at=0.0, wave_converged_at=6.0)
BASES = {
    "a": Baseline(p99_ms=4.0, inferences=100, settled_from=100, settled_errors=0),
    "b": Baseline(p99_ms=4.0, inferences=100),
    "c": Baseline(p99_ms=4.0, inferences=100),
}


def test_fleet_wide_slowdown_during_the_bake_passes_the_wave() -> None:
    # A load burst: everyone, canary and control alike, is 10x slower than before.
    slow = {"a": _busy(2, 41.0), "b": _busy(1, 40.0), "c": _busy(1, 39.0)}
    p = _plan(**BAKING)
    report = canary.judge(p, slow, BASES, 10.0)
    assert report.failure is None and report.control is not None
    assert report.control.agents == ("b", "c") and report.control.p99_ms == 39.5
    assert report.verdicts["a"].state is GateState.PASS
    assert "control group's median 39.5 ms" in report.verdicts["a"].reason
    assert canary.step(p, slow, BASES, 10.0, report) is None  # still baking
    assert canary.step(p, slow, BASES, 16.0) == Issue(1, ["b", "c"])
    # Had the control agents gone quiet, the same burst would fail on own baselines.
    stale = canary.step(p, slow, BASES, 26.0)
    assert isinstance(stale, Fail) and "no control group" in stale.reason
    shown = report.as_dict(10.0)
    assert shown["verdicts"]["a"]["state"] == "pass" and shown["control"]["agents"] == ["b", "c"]


def test_canary_ten_times_slower_than_the_control_fails_the_wave() -> None:
    obs = {"a": _busy(2, 40.0), "b": _busy(1, 4.0), "c": _busy(1, 4.4)}
    action = canary.step(_plan(**BAKING), obs, BASES, 8.0)
    assert isinstance(action, Fail) and action.rollback == ["a"]
    assert action.reason == (
        "gate failed in wave 1: a: p99 40.0 ms > 12.6 ms = max(3x, +5 ms) "
        "the control group's median 4.2 ms"
    )


def test_nan_canary_fails_whatever_the_control_does() -> None:
    obs = {"a": _busy(2, 4.0, nan_outputs=1), "b": _busy(1, 4.0, nan_outputs=9), "c": _busy(1, 4)}
    action = canary.step(_plan(**BAKING), obs, BASES, 8.0)
    assert isinstance(action, Fail) and "a: 1 NaN outputs since the update" in action.reason


def test_last_wave_has_no_control_group_and_uses_each_baseline() -> None:
    p = _plan(current_wave=1, wave_started_at=16.0, wave_converged_at=20.0)
    bases = {k: Baseline(p99_ms=4.0, inferences=100, settled_from=100) for k in "abc"}
    burst = {k: _busy(2, 40.0) for k in "abc"}
    report = canary.judge(p, burst, bases, 25.0)
    assert report.control is None
    assert "no control group (every target has the new version" in report.basis
    assert report.failure == (
        "a: p99 40.0 ms > 12.0 ms = max(3x, +5 ms) its own pre-update (no control group) 4.0 ms"
    )
    healthy = {k: _busy(2, 5.0) for k in "abc"}
    assert canary.step(p, healthy, bases, 31.0) == Succeed()


def test_failed_updates_up_to_the_limit_are_tolerated() -> None:
    def failed(reason: str) -> Observation:
        upd = UpdateState(rollout_id="r", model="m", version=2, state="failed", reason=reason)
        return Observation(True, 1, upd, {"p99_ms": 4.0}, 0.0)

    p = _plan(current_wave=1, wave_started_at=0.0, gates=Gates(max_failed_updates=1))
    one = {"a": _busy(2, 4.0), "b": failed("disk full"), "c": _busy(2, 4.0)}
    report = canary.judge(p, one, {}, 1.0)
    assert report.failure is None and report.verdicts["b"].gate == "update"
    two = one | {"c": failed("hash-mismatch: x")}
    action = canary.step(p, two, {}, 1.0)
    assert isinstance(action, Fail)
    assert action.reason == (
        "gate failed in wave 2: 2 failed updates (limit 1): b: update failed: disk full; "
        "c: update failed: hash-mismatch: x"
    )
    strict = _plan(current_wave=1, wave_started_at=0.0)
    action = canary.step(strict, one, {}, 1.0)
    assert isinstance(action, Fail) and action.reason.endswith("b: update failed: disk full")
