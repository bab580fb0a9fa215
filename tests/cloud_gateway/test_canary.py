"""Pure rollout logic with a fake clock: wave plans, gates, the step machine."""

from __future__ import annotations

import pytest

from cloud_gateway import canary
from cloud_gateway.canary import Baseline, Fail, Issue, MarkConverged, Observation, Plan, Succeed
from cloud_gateway.schemas import Gates
from models.errors import InvalidInput

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


def test_gates() -> None:
    g = Gates(max_error_rate=0.05, max_p99_ms=50.0, max_p99_ratio=3.0, max_nan_outputs=0)
    base = Baseline(p99_ms=4.0, nan_outputs=2, settled_from=0)
    ok = _obs(2, p99_ms=5.0, nan_outputs=2, error_rate=0.0, inferences=20)
    assert canary.gate_failure("a", ok, base, g, 2, "r") is None
    assert "NaN" in canary.gate_failure("a", _obs(2, nan_outputs=3), base, g, 2, "r")
    assert "error rate" in canary.gate_failure(
        "a", _obs(2, error_rate=0.2, inferences=20), base, g, 2, "r"
    )
    assert "3x" in canary.gate_failure("a", _obs(2, p99_ms=13.0, inferences=20), base, g, 2, "r")
    # Too few new-version inferences: the windowed latency still shows the old version.
    assert canary.gate_failure("a", _obs(2, p99_ms=13.0, inferences=19), base, g, 2, "r") is None
    unsettled = Baseline(p99_ms=4.0)
    assert (
        canary.gate_failure("a", _obs(2, p99_ms=99.0, inferences=99), unsettled, g, 2, "r") is None
    )
    # Below the noise floor (pre-update p99 + 5 ms) a 3x jump is not a regression.
    tiny = Baseline(p99_ms=0.1, settled_from=0)
    assert canary.gate_failure("a", _obs(2, p99_ms=1.2, inferences=30), tiny, g, 2, "r") is None
    settled = Baseline(settled_from=0)
    assert "50.0 ms" in canary.gate_failure(
        "a", _obs(2, p99_ms=60.0, inferences=20), settled, g, 2, "r"
    )
    # Not yet on the new version: metrics still describe the old one.
    assert canary.gate_failure("a", _obs(1, nan_outputs=99), base, g, 2, "r") is None
    # A counter reset (agent restart) counts from zero.
    assert canary.gate_failure("a", _obs(2, nan_outputs=1), base, g, 2, "r") is not None
    failed = Observation(
        True,
        1,
        {"state": "failed", "version": 2, "rollout_id": "r", "reason": "hash-mismatch: x"},
        {},
    )
    assert "hash-mismatch" in canary.gate_failure("a", failed, base, g, 2, "r")
    other = Observation(True, 1, {"state": "failed", "version": 2, "rollout_id": "old"}, {})
    assert canary.gate_failure("a", other, base, g, 2, "r") is None


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
