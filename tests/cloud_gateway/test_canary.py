"""Pure rollout logic with a fake clock: wave plans, the step machine and its gate report
(the per-agent gates themselves are in test_gates.py)."""

from __future__ import annotations

from typing import Any

from bus.desired import UpdateState
from bus.heartbeat import Metrics
from cloud_gateway import canary
from cloud_gateway.canary import Fail, Issue, MarkConverged, Plan, Succeed
from cloud_gateway.gates import Baseline, GateState, Observation
from cloud_gateway.schemas import Gates

AGENTS = [f"a{i:02d}" for i in range(20)]


def _obs(version: int, **metrics: float) -> Observation:
    return Observation(
        online=True, version=version, update=None, metrics=Metrics.model_validate(dict(metrics))
    )


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
    settled = {k: Baseline(p99_ms=4.0, settled_from=0, settled_errors=0) for k in "abc"}
    healthy = {"a": _obs(2, inferences=30, p99_ms=4.0)}
    assert canary.step(p, healthy, settled, 15.0) is None  # baking
    assert canary.step(p, healthy, settled, 16.0) == Issue(1, ["b", "c"])
    p = _plan(current_wave=1, wave_started_at=16.0, wave_converged_at=20.0)
    obs = {k: _obs(2, inferences=30, p99_ms=4.0) for k in "abc"}
    assert canary.step(p, obs, settled, 30.0) == Succeed()


def test_the_bake_ends_only_when_every_agent_of_the_wave_has_a_verdict() -> None:
    p = _plan(current_wave=0, wave_started_at=0.0, wave_converged_at=6.0)
    base = {"a": Baseline(p99_ms=4.0, settled_from=100, settled_errors=0)}
    few = {"a": _obs(2, inferences=105, p99_ms=4.0)}  # 5 of 20 new-version results
    for now in (16.0, 40.0, 76.0):  # bake over at 16; timeout 60 s after it
        report = canary.judge(p, few, base, now)
        assert report.verdicts["a"].state is GateState.WAIT
        assert report.verdicts["a"].reason == "5/20 new-version results before judging"
        assert canary.step(p, few, base, now, report) is None
    enough = {"a": _obs(2, inferences=120, p99_ms=4.0)}
    assert canary.step(p, enough, base, 40.0) == Issue(1, ["b", "c"])
    # Evidence that never arrives: the wave timeout rolls back every issued agent.
    action = canary.step(p, few, base, 76.5)
    assert isinstance(action, Fail) and action.rollback == ["a"]
    assert action.reason == (
        "wave 1: no gate verdict for 1 agent(s) within the 60 s wave timeout after the "
        "bake: a: 5/20 new-version results before judging"
    )
    # min_samples=0 does not make "no result at all" a verdict (nor divide by zero).
    zero = _plan(**BAKING, gates=Gates(min_samples=0))
    silent = {"a": _obs(2, inferences=100, p99_ms=4.0)}
    assert canary.judge(zero, silent, base, 10.0).verdicts["a"].state is GateState.WAIT
    one = {"a": _obs(2, inferences=101, p99_ms=4.0)}
    assert canary.judge(zero, one, base, 10.0).verdicts["a"].state is GateState.PASS


def test_idle_agents_wait_for_evidence_unless_the_gates_allow_them() -> None:
    # Wave 2 = b, c converged at t=20 (bake 10 s, grace 10 s); c gets no traffic at all.
    bases = {k: Baseline(p99_ms=4.0, settled_from=100, settled_errors=0) for k in "abc"}
    obs = {
        "a": _obs(2, inferences=200, p99_ms=4.0),
        "b": _obs(2, inferences=200, p99_ms=4.0),
        "c": _obs(2, inferences=100, p99_ms=0.0),
    }
    strict = _plan(current_wave=1, wave_started_at=16.0, wave_converged_at=20.0)
    report = canary.judge(strict, obs, bases, 35.0)  # bake over, grace not yet
    assert report.verdicts["c"].state is GateState.WAIT
    assert canary.step(strict, obs, bases, 35.0, report) is None
    report = canary.judge(strict, obs, bases, 40.0)
    idle = report.verdicts["c"]
    assert (idle.state, idle.gate) == (GateState.IDLE, "idle")
    assert idle.reason == (
        "idle: no v2 results during the 10 s bake + 10 s grace; no evidence: "
        "allow_idle_agents is off, the wave waits until its timeout"
    )
    assert report.as_dict(40.0)["verdicts"]["c"]["state"] == "idle"
    assert canary.step(strict, obs, bases, 40.0, report) is None
    action = canary.step(strict, obs, bases, 91.0)
    assert isinstance(action, Fail) and action.rollback == ["a", "b", "c"]
    assert "no gate verdict for 1 agent(s)" in action.reason and "c: idle:" in action.reason
    lenient = _plan(
        current_wave=1,
        wave_started_at=16.0,
        wave_converged_at=20.0,
        gates=Gates(allow_idle_agents=True),
    )
    assert canary.step(lenient, obs, bases, 39.0) is None  # grace not over yet
    report = canary.judge(lenient, obs, bases, 40.0)
    assert report.verdicts["c"].reason.endswith("passes: allow_idle_agents is on")
    assert canary.step(lenient, obs, bases, 40.0, report) == Succeed()
    # A trickle of traffic is not idle: it waits for min_samples like anyone else.
    trickle = obs | {"c": _obs(2, inferences=103, p99_ms=4.0)}
    assert canary.judge(lenient, trickle, bases, 40.0).verdicts["c"].state is GateState.WAIT
    assert canary.step(lenient, trickle, bases, 40.0) is None


def test_step_fails_and_rolls_back_issued_waves_only() -> None:
    p = _plan(current_wave=0, wave_started_at=0.0, wave_converged_at=1.0)
    action = canary.step(p, {"a": _obs(2, nan_outputs=5)}, {}, 2.0)
    assert isinstance(action, Fail) and action.rollback == ["a"]
    assert "wave 1" in action.reason and "NaN" in action.reason
    p = _plan(current_wave=0, wave_started_at=0.0)
    action = canary.step(p, {"a": _obs(1)}, {}, 61.0)
    assert isinstance(action, Fail) and "did not converge" in action.reason


def test_min_inferences_holds_the_bake() -> None:
    gates = Gates(min_inferences=10, min_samples=1)
    p = _plan(current_wave=1, wave_started_at=0.0, wave_converged_at=0.0, gates=gates)
    obs = {k: _obs(2, inferences=5) for k in "abc"}
    base = {k: Baseline(inferences=0, settled_from=0, settled_errors=0) for k in "abc"}
    assert canary.step(p, obs, base, 30.0) is None
    # Held by min_inferences alone, the wave still times out rather than hang.
    action = canary.step(p, obs, base, 71.0)
    assert isinstance(action, Fail) and "a: 5/10 inferences since issued" in action.reason
    obs = {k: _obs(2, inferences=20) for k in "abc"}
    assert canary.step(p, obs, base, 30.0) == Succeed()


def _busy(version: int, p99_ms: float, **metrics: Any) -> Observation:
    m = {"inferences": 500, "errors": 0, "nan_outputs": 0, "p99_ms": p99_ms} | metrics
    return Observation(
        online=True, version=version, metrics=Metrics.model_validate(m), seen_at=10.0
    )


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
    assert canary.step(p, slow, BASES, 16.0) == Issue(1, ["b", "c"])  # judged and baked
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
        return Observation(True, 1, upd, Metrics(p99_ms=4.0), 0.0)

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


def test_a_tolerated_failed_update_neither_blocks_convergence_nor_the_bake() -> None:
    upd = UpdateState(rollout_id="r", model="m", version=2, state="failed", reason="disk full")
    failed = Observation(True, 1, upd, Metrics(p99_ms=4.0), 0.0)
    obs = {"a": _busy(2, 4.0), "b": failed, "c": _busy(2, 4.0)}
    bases = {k: Baseline(p99_ms=4.0, inferences=100, settled_from=100) for k in "abc"}
    lenient = Gates(max_failed_updates=1)
    p = _plan(current_wave=1, wave_started_at=0.0, gates=lenient)
    assert canary.step(p, obs, bases, 1.0) == MarkConverged(1)
    p = _plan(current_wave=1, wave_started_at=0.0, wave_converged_at=1.0, gates=lenient)
    assert canary.step(p, obs, bases, 11.0) == Succeed()
