"""Health gates as pure functions: canaries judged against a concurrent control group,
the own-baseline fallback, absolute NaN/update gates, and heartbeat ``update`` parsing."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from bus.desired import UpdatePhase, UpdateState
from bus.heartbeat import Metrics
from cloud_gateway.gates import (
    Baseline,
    Control,
    GateState,
    Observation,
    evaluate,
    find_control,
    stored_update,
)
from cloud_gateway.schemas import Gates, StatusReport

NEW, OLD, RID = 2, 1, "ro-1"
NOW = 1000.0
G = Gates()  # ratio 3x, +5 ms slack, excess 0.02, ceiling 0.05, min_samples 20


def obs(version: int = NEW, *, seen_at: float | None = NOW, **metrics: Any) -> Observation:
    m = {"inferences": 100, "errors": 0, "nan_outputs": 0, "p99_ms": 4.0} | metrics
    return Observation(
        online=True, version=version, metrics=Metrics.model_validate(m), seen_at=seen_at
    )


SETTLED = Baseline(p99_ms=4.0, inferences=0, settled_from=0, settled_errors=0)


def control_of(p99s: list[float], **metrics: Any) -> tuple[Control | None, str]:
    observations = {f"c{i}": obs(OLD, p99_ms=p, **metrics) for i, p in enumerate(p99s)}
    return find_control(list(observations), observations, {}, NEW, G, NOW)


def test_fleet_wide_slowdown_during_the_bake_does_not_fail_the_gate() -> None:
    # Pre-update p99 was 4 ms everywhere; a load burst takes every agent to ~40 ms.
    control, basis = control_of([38.0, 41.0, 40.0])
    assert control is not None and control.p99_ms == 40.0
    assert "control group of 3 agent(s) on v1: median p99 40.0 ms" in basis
    canary = obs(p99_ms=44.0)
    verdict = evaluate(canary, SETTLED, G, NEW, RID, control)
    assert verdict.state is GateState.PASS, verdict.reason
    assert "p99 44.0 ms <= 120.0 ms = max(3x, +5 ms) the control group's median 40.0 ms" in (
        verdict.reason
    )
    # The same numbers judged against the agent's own pre-update p99 would have failed:
    # this is exactly the false rollback the control group prevents.
    own = evaluate(canary, SETTLED, G, NEW, RID, None)
    assert own.state is GateState.FAIL and own.gate == "p99"


def test_canary_ten_times_slower_than_the_control_fails_with_the_numbers() -> None:
    control, _ = control_of([5.0, 6.0, 4.0])
    verdict = evaluate(obs(p99_ms=50.0), SETTLED, G, NEW, RID, control)
    assert verdict.state is GateState.FAIL and verdict.gate == "p99"
    assert verdict.reason == (
        "p99 50.0 ms > 15.0 ms = max(3x, +5 ms) the control group's median 5.0 ms"
    )
    # Just inside the limit passes: the comparison, not the mere presence of a control.
    assert evaluate(obs(p99_ms=15.0), SETTLED, G, NEW, RID, control).state is GateState.PASS


def test_nan_and_failed_updates_are_absolute() -> None:
    # The control group reports NaNs too: a NaN canary still fails.
    control, _ = control_of([4.0, 4.0], nan_outputs=50)
    base = Baseline(nan_outputs=2, settled_from=0, settled_errors=0)
    verdict = evaluate(obs(nan_outputs=3), base, G, NEW, RID, control)
    assert verdict.state is GateState.FAIL and verdict.gate == "nan"
    assert verdict.reason == "1 NaN outputs since the update (limit 0)"
    # Judged as soon as it serves the new version, before min_samples.
    early = Baseline(nan_outputs=0)
    assert evaluate(obs(nan_outputs=1, inferences=1), early, G, NEW, RID, None).gate == "nan"
    # A counter reset (agent restart) counts from zero.
    assert evaluate(obs(nan_outputs=1), base, G, NEW, RID, control).gate == "nan"
    failed = Observation(
        True, OLD, UpdateState(rollout_id=RID, model="m", version=NEW, state="failed", reason="x")
    )
    verdict = evaluate(failed, SETTLED, G, NEW, RID, control)
    assert (verdict.state, verdict.gate, verdict.reason) == (
        GateState.FAIL,
        "update",
        "update failed: x",
    )
    other = Observation(True, OLD, UpdateState(rollout_id="old", version=NEW, state="failed"))
    assert evaluate(other, SETTLED, G, NEW, RID, control).state is GateState.WAIT


def test_without_a_control_group_the_own_baseline_rule_applies_and_says_so() -> None:
    control, basis = find_control([], {}, {}, NEW, G, NOW)
    assert control is None and "no control group (every target has the new version" in basis
    verdict = evaluate(obs(p99_ms=13.0), SETTLED, G, NEW, RID, None)
    assert verdict.state is GateState.FAIL
    assert verdict.reason == (
        "p99 13.0 ms > 12.0 ms = max(3x, +5 ms) its own pre-update (no control group) 4.0 ms"
    )
    ok = evaluate(obs(p99_ms=8.0), SETTLED, G, NEW, RID, None)
    assert ok.state is GateState.PASS and "no control group" in ok.reason
    # Below the noise floor (pre-update p99 + 5 ms) a 3x jump is not a regression.
    tiny = Baseline(p99_ms=0.1, settled_from=0, settled_errors=0)
    assert evaluate(obs(p99_ms=1.2), tiny, G, NEW, RID, None).state is GateState.PASS
    disabled = find_control(["c0"], {"c0": obs(OLD)}, {}, NEW, Gates(control=False), NOW)
    assert disabled[0] is None and "disabled" in disabled[1]


def test_error_rate_against_the_control_group_plus_an_absolute_ceiling() -> None:
    observations = {
        f"c{i}": obs(OLD, inferences=194, errors=6, p99_ms=4.0) for i in range(2)
    }  # 3% errors fleet-wide since the wave was issued (counters from 0)
    control, basis = find_control(list(observations), observations, {}, NEW, G, NOW)
    assert control is not None and control.error_rate == pytest.approx(0.03)
    assert control.results == 400 and "error rate 0.030 over 400 results" in basis
    same = evaluate(obs(inferences=96, errors=4), SETTLED, G, NEW, RID, control)
    assert same.state is GateState.PASS, same.reason
    assert "error rate 0.040 (4/100) <= 0.050 = the control group's 0.030 + 0.02" in same.reason
    # Control also failing a lot does not excuse crossing the absolute ceiling.
    high = evaluate(obs(inferences=94, errors=6), SETTLED, G, NEW, RID, control)
    assert high.gate == "error-rate"
    assert high.reason == "error rate 0.060 (6/100) > absolute ceiling 0.050"
    # A clean control: 3% on the canary alone is a regression.
    clean, _ = control_of([4.0, 4.0])
    worse = evaluate(obs(inferences=97, errors=3), SETTLED, G, NEW, RID, clean)
    assert worse.reason == "error rate 0.030 (3/100) > 0.020 = the control group's 0.000 + 0.02"
    # Errors count towards min_samples: a version failing every request is judged.
    broken = evaluate(obs(inferences=0, errors=25), SETTLED, G, NEW, RID, clean)
    assert broken.gate == "error-rate"
    # Without a control group the reference is the agent's own pre-update rate.
    base = Baseline(p99_ms=4.0, inferences=980, errors=20, settled_from=980, settled_errors=20)
    own = evaluate(obs(inferences=1076, errors=24), base, G, NEW, RID, None)
    assert own.state is GateState.PASS
    assert "its own pre-update (no control group) 0.020 + 0.02" in own.reason


def test_latency_and_errors_wait_for_new_version_samples() -> None:
    unsettled = Baseline(p99_ms=4.0)
    verdict = evaluate(obs(p99_ms=99.0), unsettled, G, NEW, RID, None)
    assert verdict.state is GateState.WAIT
    few = Baseline(p99_ms=4.0, settled_from=90, settled_errors=0)
    verdict = evaluate(obs(p99_ms=99.0, inferences=109), few, G, NEW, RID, None)
    assert verdict.state is GateState.WAIT and verdict.reason.startswith("19/20")
    assert evaluate(obs(OLD, nan_outputs=9), SETTLED, G, NEW, RID, None).state is GateState.WAIT
    assert evaluate(None, SETTLED, G, NEW, RID, None).state is GateState.WAIT


def test_absolute_p99_limit_still_applies() -> None:
    control, _ = control_of([40.0])
    gates = Gates(max_p99_ms=30.0)
    verdict = evaluate(obs(p99_ms=41.0), SETTLED, gates, NEW, RID, control)
    assert verdict.reason == "p99 41.0 ms > absolute limit 30.0 ms"


def test_control_group_membership() -> None:
    busy = UpdateState(model="m", version=3, state=UpdatePhase.SWAPPING)
    observations = {
        "ok": obs(OLD, p99_ms=4.0),
        "older": obs(0 + 1, p99_ms=6.0),
        "stale": obs(OLD, p99_ms=100.0, seen_at=NOW - 16.0),
        "offline": Observation(False, OLD, metrics=Metrics(p99_ms=100.0)),
        "idle": obs(OLD, p99_ms=0.0),
        "on-new": obs(NEW, p99_ms=100.0),
        "swapping": Observation(True, OLD, busy, Metrics(p99_ms=100.0), NOW),
        "no-model": obs(None, p99_ms=100.0),  # type: ignore[arg-type]
    }
    pending = [*observations, "never-reported"]
    control, basis = find_control(pending, observations, {}, NEW, G, NOW)
    assert control is not None and control.agents == ("ok", "older")
    assert control.p99_ms == 5.0 and control.versions == (OLD,)
    need = Gates(min_control_agents=3)
    none, basis = find_control(pending, observations, {}, NEW, need, NOW)
    assert none is None
    assert basis.startswith("no control group (2 of 9 remaining agents online, fresh and serving")
    # The control's error window starts at its own baseline (the wave's issue).
    bases = {"ok": Baseline(inferences=100, errors=0), "older": Baseline(inferences=100)}
    windowed, _ = find_control(
        ["ok", "older"],
        {"ok": obs(OLD, inferences=190, errors=10), "older": obs(OLD, inferences=200)},
        bases,
        NEW,
        G,
        NOW,
    )
    assert windowed is not None and (windowed.results, windowed.error_rate) == (200, 0.05)


def test_heartbeat_update_field_is_an_update_state() -> None:
    base: dict[str, Any] = {"agent_id": "a", "models": {}, "metrics": {}}
    upd = {"rollout_id": "r", "model": "m", "version": 2, "state": "failed", "reason": "x"}
    report = StatusReport.model_validate(base | {"update": upd | {"progress": 0.5}})
    assert report.update == upd  # unknown keys from a newer agent are dropped
    assert StatusReport.model_validate(base | {"update": None}).update is None
    for bad in ({"state": "exploded"}, {"version": "two"}, "failed"):
        with pytest.raises(ValidationError):
            StatusReport.model_validate(base | {"update": bad})
    assert stored_update(upd) == UpdateState(**upd)
    assert stored_update({"state": "exploded"}) is None and stored_update(None) is None


def test_a_p99_breach_must_still_hold_at_the_confirmation_count() -> None:
    control, _ = control_of([5.0, 6.0, 4.0])
    # 30 new-version results: a swap transient could still sit in the latency window.
    early = evaluate(obs(p99_ms=50.0, inferences=30), SETTLED, G, NEW, RID, control)
    assert early.state is GateState.WAIT
    assert early.reason == (
        "p99 50.0 ms > 15.0 ms = max(3x, +5 ms) the control group's median 5.0 ms; "
        "confirming at 30/40 results"
    )
    sustained = evaluate(obs(p99_ms=50.0, inferences=40), SETTLED, G, NEW, RID, control)
    assert (sustained.state, sustained.gate) == (GateState.FAIL, "p99")
    gone = evaluate(obs(p99_ms=6.0, inferences=40), SETTLED, G, NEW, RID, control)
    assert gone.state is GateState.PASS
    # Healthy numbers pass at min_samples, without waiting for the confirmation count.
    assert evaluate(obs(inferences=20), SETTLED, G, NEW, RID, control).state is GateState.PASS
    absolute = Gates(max_p99_ms=30.0, p99_confirm_samples=0)  # 0: no confirmation
    now = evaluate(obs(p99_ms=31.0, inferences=20), SETTLED, absolute, NEW, RID, control)
    assert now.reason == "p99 31.0 ms > absolute limit 30.0 ms"
