"""Routing policies as pure functions of observed state (times are plain numbers)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from edge_agent.routing.policy import Decision, Observed, Route, make_policy
from models.errors import ConfigError

SLO = 0.100


def observed(**changes: object) -> Observed:
    """An idle node with a healthy, fast cloud, 100 ms before the deadline."""
    base = Observed(
        now=1000.0,
        deadline=1000.0 + SLO,
        batch_size=8,
        local_queue_s=0.0,
        local_service_s=0.010,
        remote_configured=True,
        remote_available=True,
        remote_rtt_s=0.020,
        remote_p95_s=0.030,
        budget_ok=True,
    )
    return replace(base, **changes)  # type: ignore[arg-type]


SLO_AWARE = make_policy("slo-aware")


def test_idle_node_stays_local() -> None:
    assert SLO_AWARE.decide(observed()) == Decision(Route.LOCAL, "local-meets-deadline")


def test_growing_local_queue_offloads_once_it_passes_the_deadline() -> None:
    routes = [
        SLO_AWARE.decide(observed(local_queue_s=q)).route for q in (0.0, 0.03, 0.06, 0.12, 0.5)
    ]
    assert routes[:3] == [Route.LOCAL] * 3  # ETA 10..70 ms: within the 80 ms safe slack
    assert routes[3:] == [Route.REMOTE] * 2
    assert SLO_AWARE.decide(observed(local_queue_s=0.12)).reason == "local-late-remote-fits"


def test_slow_cloud_keeps_work_local() -> None:
    decision = SLO_AWARE.decide(
        observed(local_queue_s=0.08, remote_rtt_s=0.2, remote_p95_s=0.3)
    )  # local ETA 90 ms: fits, but not with margin; the cloud cannot make it at all
    assert decision == Decision(Route.LOCAL, "remote-too-slow")


def test_open_breaker_keeps_work_local() -> None:
    decision = SLO_AWARE.decide(observed(local_queue_s=0.08, remote_available=False))
    assert decision == Decision(Route.LOCAL, "breaker-open")
    # ...and with the breaker closed the same load would go to the cloud.
    assert SLO_AWARE.decide(observed(local_queue_s=0.08)).route is Route.REMOTE


def test_infeasible_deadline_sheds_with_a_flag() -> None:
    decision = SLO_AWARE.decide(observed(local_queue_s=0.5, remote_rtt_s=0.4, remote_p95_s=0.6))
    assert decision.route is Route.SHED and decision.expected_late
    assert decision.reason == "infeasible"
    passed = SLO_AWARE.decide(observed(now=1000.2))
    assert passed == Decision(Route.SHED, "deadline-passed", expected_late=True)
    no_cloud = SLO_AWARE.decide(observed(local_queue_s=0.5, remote_available=False))
    assert no_cloud == Decision(Route.SHED, "infeasible-breaker-open", expected_late=True)


def test_hedges_when_both_estimates_sit_near_the_deadline() -> None:
    decision = SLO_AWARE.decide(observed(local_queue_s=0.08, remote_rtt_s=0.09, remote_p95_s=0.12))
    assert decision == Decision(Route.HEDGE, "both-near-deadline")
    late_local = SLO_AWARE.decide(observed(local_queue_s=0.2, remote_rtt_s=0.09, remote_p95_s=0.12))
    assert late_local == Decision(Route.HEDGE, "remote-tail-risk")


def test_budget_exhausted_keeps_work_local_or_sheds() -> None:
    assert SLO_AWARE.decide(observed(local_queue_s=0.08, budget_ok=False)) == Decision(
        Route.LOCAL, "budget-exhausted"
    )
    assert SLO_AWARE.decide(observed(local_queue_s=0.3, budget_ok=False)).reason == (
        "infeasible-budget-exhausted"
    )


def test_node_pressure_prefers_a_safe_cloud() -> None:
    assert SLO_AWARE.decide(observed(node_pressure=0.95)) == Decision(Route.REMOTE, "node-pressure")
    assert SLO_AWARE.decide(observed(node_pressure=0.5)).route is Route.LOCAL


def test_baselines() -> None:
    busy = observed(local_queue_s=0.2)
    assert make_policy("local-only").decide(busy) == Decision(
        Route.LOCAL, "policy-local-only", expected_late=True
    )
    assert make_policy("cloud-only").decide(observed()).route is Route.REMOTE
    assert make_policy("cloud-only").decide(observed(remote_configured=False)).reason == (
        "fallback-no-remote"
    )
    threshold = make_policy("threshold", queue_threshold_s=0.05)
    assert threshold.decide(observed(local_queue_s=0.04)).route is Route.LOCAL
    assert threshold.decide(observed(local_queue_s=0.06)) == Decision(
        Route.REMOTE, "queue-above-threshold"
    )


CASCADE = make_policy("cascade", min_confidence=0.7)


def test_cascade_runs_the_edge_model_first_on_an_idle_node() -> None:
    assert CASCADE.decide(observed()) == Decision(Route.LOCAL, "edge-first")
    # No cloud at all: still the edge model first.
    assert CASCADE.decide(observed(remote_configured=False)) == Decision(Route.LOCAL, "edge-first")


def test_cascade_routes_under_load_exactly_like_slo_aware() -> None:
    """Before the edge model runs, cascade is SloAware (a late edge answer helps nobody)."""
    loads = [
        observed(local_queue_s=q, remote_rtt_s=rtt, remote_p95_s=p95, **extra)
        for q in (0.0, 0.03, 0.08, 0.12, 0.5)
        for rtt, p95 in ((0.02, 0.03), (0.09, 0.12), (0.2, 0.3), (0.4, 0.6))
        for extra in ({}, {"remote_available": False}, {"budget_ok": False})
    ] + [observed(node_pressure=0.95), observed(now=1000.2)]
    changed = 0
    for obs in loads:
        want, got = SLO_AWARE.decide(obs), CASCADE.decide(obs)
        if want == Decision(Route.LOCAL, "local-meets-deadline"):
            assert got == Decision(Route.LOCAL, "edge-first")
        else:
            assert got == want, obs
            changed += got.route is not Route.LOCAL
    assert changed > 10  # the grid really exercises remote, hedge and shed routes
    # The stub this replaces answered locally however deep the queue was:
    assert CASCADE.decide(observed(local_queue_s=0.12)) == Decision(
        Route.REMOTE, "local-late-remote-fits"
    )
    assert CASCADE.decide(observed(node_pressure=0.95)).route is Route.REMOTE


def test_cascade_escalates_low_confidence_rows_when_the_cloud_makes_it() -> None:
    assert CASCADE.decide(observed(confidence=0.9)) == Decision(Route.LOCAL, "confident")
    assert CASCADE.decide(observed(confidence=0.7)) == Decision(Route.LOCAL, "confident")
    low = observed(confidence=0.4)
    assert CASCADE.decide(low) == Decision(Route.REMOTE, "escalated-low-confidence")
    assert CASCADE.escalate(low) == CASCADE.decide(low)
    # The local load does not matter any more: the edge answer already exists.
    assert CASCADE.decide(observed(confidence=0.4, local_queue_s=5.0)).route is Route.REMOTE


def test_cascade_keeps_the_edge_answer_when_escalation_cannot_work() -> None:
    cases = {
        "no-remote": observed(confidence=0.4, remote_configured=False),
        "breaker-open": observed(confidence=0.4, remote_available=False),
        "budget-exhausted": observed(confidence=0.4, budget_ok=False),
        "no-time": observed(confidence=0.4, remote_rtt_s=0.15),  # slack is 100 ms
    }
    for why, obs in cases.items():
        assert CASCADE.decide(obs) == Decision(Route.LOCAL, f"low-confidence-kept:{why}")
    late = CASCADE.decide(observed(confidence=0.4, now=1000.2))
    assert late == Decision(Route.LOCAL, "low-confidence-kept:no-time", expected_late=True)
    # The RTT estimate is what must fit: just inside the slack still escalates.
    assert CASCADE.decide(observed(confidence=0.4, remote_rtt_s=0.099)).route is Route.REMOTE


def test_cascade_threshold_bounds() -> None:
    everything = make_policy("cascade", min_confidence=1.01)
    assert everything.decide(observed(confidence=1.0)).route is Route.REMOTE
    nothing = make_policy("cascade", min_confidence=0.0)
    assert nothing.decide(observed(confidence=0.0)) == Decision(Route.LOCAL, "confident")
    assert make_policy("cascade").min_confidence == 0.8  # type: ignore[attr-defined]


def test_unknown_policy_and_parameters_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="unknown policy 'fastest'"):
        make_policy("fastest")
    with pytest.raises(ConfigError, match="bad parameters"):
        make_policy("threshold", nonsense=1)
    assert {make_policy(n).name for n in ("local-only", "slo-aware")} == {"local-only", "slo-aware"}
