"""Config rollouts through the pure gate logic: a refused config is a failed update, the
SLO-attainment gate judges only results since convergence, and it waits for evidence."""

from __future__ import annotations

import json
from typing import Any

from bus.heartbeat import Metrics
from cloud_gateway import canary, config, gates
from cloud_gateway.schemas import Gates


def _row(report: dict[str, Any] | None, **metrics: Any) -> dict[str, Any]:
    return {
        "online": 1,
        "config": None if report is None else json.dumps(report),
        "metrics": json.dumps(metrics),
        "last_seen": 100.0,
    }


def _plan(version: int, g: Gates) -> canary.Plan:
    return canary.Plan(
        rollout_id="ro-1",
        version=version,
        waves=[["a"], ["b"]],
        current_wave=0,
        wave_started_at=0.0,
        wave_converged_at=1.0,
        bake_s=0.0,
        wave_timeout_s=30.0,
        gates=g,
    )


def test_a_refused_config_fails_the_update_gate() -> None:
    refused = {"version": 3, "state": "failed", "refused_version": 9, "reason": "slo_ms: bad"}
    obs = config.observation(_row(refused), "ro-1", 9)
    assert obs.version == 3 and obs.update is not None
    report = canary.judge(_plan(9, Gates()), {"a": obs}, {}, 10.0)
    assert report.verdicts["a"].gate == "update"
    assert report.failure is not None and "slo_ms: bad" in report.failure
    # Refusing another version is not this rollout's failure; running it is convergence.
    assert config.observation(_row(refused), "ro-1", 10).update is None
    assert gates.converged(config.observation(_row({"version": 9, "state": "ok"}), "ro-1", 9), 9)
    assert config.observation(_row(None), "ro-1", 9).version is None  # never reported


def _verdict(g: Gates, **now: Any) -> gates.Verdict:
    before = {"inferences": 1000, "errors": 0, "results": 1000, "deadline_met": 990}
    known = Metrics.model_validate(before)
    base = gates.Baseline.of(known).settle(known)
    obs = config.observation(_row({"version": 9, "state": "ok"}, p99_ms=5.0, **now), "ro-1", 9)
    return gates.evaluate(obs, base, g, 9, "ro-1", None)


def test_slo_attainment_gate_judges_the_window_since_convergence() -> None:
    g = Gates(min_slo_attainment=0.9, min_samples=20, max_p99_ratio=None)
    # 99 % lifetime, but 10 of the 100 results since convergence met their deadline.
    bad = _verdict(g, inferences=1100, errors=0, results=1100, deadline_met=1000)
    assert (bad.state, bad.gate) == (gates.GateState.FAIL, "slo")
    assert "SLO attainment 0.100 (10/100" in bad.reason
    good = _verdict(g, inferences=1100, errors=0, results=1100, deadline_met=1095)
    assert good.state is gates.GateState.PASS
    few = _verdict(g, inferences=1010, errors=0, results=1010, deadline_met=1000)
    assert few.state is gates.GateState.WAIT  # 10 of 20 results: no verdict yet
    off = _verdict(Gates(max_p99_ratio=None), inferences=1100, results=1100, deadline_met=1000)
    assert off.state is gates.GateState.PASS  # the gate is off by default
    older_agent = _verdict(g, inferences=1100, errors=0)  # no counters reported: not judged
    assert older_agent.state is gates.GateState.PASS
