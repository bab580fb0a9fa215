"""Routing policies as pure functions of observed state (times are plain numbers)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from models.errors import ConfigError
from offload.policy import Decision, Observed, Route, make_policy

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


def test_cascade_sends_low_confidence_to_the_cloud() -> None:
    cascade = make_policy("cascade", min_confidence=0.7)
    assert cascade.decide(observed()).reason == "edge-first"
    assert cascade.decide(observed(confidence=0.9)) == Decision(Route.LOCAL, "confident")
    assert cascade.decide(observed(confidence=0.4)) == Decision(Route.REMOTE, "low-confidence")
    assert cascade.decide(observed(confidence=0.4, remote_available=False)).route is Route.LOCAL


def test_unknown_policy_and_parameters_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="unknown policy 'fastest'"):
        make_policy("fastest")
    with pytest.raises(ConfigError, match="bad parameters"):
        make_policy("threshold", nonsense=1)
    assert {make_policy(n).name for n in ("local-only", "slo-aware")} == {"local-only", "slo-aware"}
