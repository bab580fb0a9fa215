"""Live latency estimates: EWMA and windowed quantiles."""

from __future__ import annotations

import pytest

from offload.stats import LatencyEstimator


def test_ewma_and_windowed_p95() -> None:
    est = LatencyEstimator(alpha=0.5, window=100)
    assert est.ewma is None and est.quantile(0.95) is None
    est.observe(0.010)
    est.observe(0.020)
    assert est.ewma == pytest.approx(0.015)
    for i in range(100):
        est.observe(0.001 * (i + 1))  # the two first samples leave the window
    assert est.count == 100
    assert est.quantile(0.95) == pytest.approx(0.09505)
    assert est.quantile(0.5) == pytest.approx(0.0505)
    est.observe(1.0)  # a new sample invalidates cached quantiles
    assert est.quantile(0.95) > 0.0951


def test_alpha_is_validated() -> None:
    with pytest.raises(ValueError):
        LatencyEstimator(alpha=0.0)


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def healthy(clock: FakeClock, n: int = 100) -> LatencyEstimator:
    """A remote answering in 40-49 ms (a 40 ms WAN), measured ``n`` times."""
    est = LatencyEstimator(window=256, stale_s=5.0, clock=clock)
    for i in range(n):
        est.observe(0.040 + 0.001 * (i % 10))
    return est


def test_a_run_of_timeouts_raises_p95_and_ewma_above_the_budget() -> None:
    clock = FakeClock()
    est = healthy(clock)
    budget = 0.080
    assert est.quantile(0.95) < budget and est.ewma < budget
    for _ in range(10):  # the remote stalls: every call runs out its 80 ms budget
        clock.now += budget
        assert est.observe_censored(budget)
    assert est.quantile(0.95) > budget
    assert est.ewma > budget
    # What the remote does when it answers is kept apart (the breaker judges with it).
    assert est.exact_quantile(0.95) < 0.050 and est.exact_ewma < 0.050
    assert est.count == 100 and est.censored_count == 10


def test_a_failure_shorter_than_a_typical_answer_says_nothing() -> None:
    clock = FakeClock()
    est = healthy(clock)
    before = (est.ewma, est.quantile(0.95))
    assert not est.observe_censored(0.003)  # gave up after 3 ms against a 45 ms remote
    assert (est.ewma, est.quantile(0.95)) == before
    assert est.censored_count == 0
    # With nothing measured yet, any failure is the only evidence there is.
    fresh = LatencyEstimator(clock=clock)
    assert fresh.observe_censored(0.003)
    assert fresh.ewma == pytest.approx(0.0045) and fresh.exact_ewma is None


def test_stall_evidence_expires_so_the_remote_is_tried_again() -> None:
    clock = FakeClock()
    est = healthy(clock)
    exact = (est.exact_ewma, est.exact_quantile(0.95))
    for _ in range(20):
        est.observe_censored(0.2)
    clock.now = 3.0
    est.observe_censored(0.2)  # one later sample keeps its own 5 s
    clock.now = 5.0
    assert est.censored_count == 1
    assert est.ewma > 0.1  # still elevated while any stall evidence is live
    clock.now = 8.0
    assert est.censored_count == 0
    assert (est.ewma, est.quantile(0.95)) == exact


def test_censoring_parameters_are_validated() -> None:
    with pytest.raises(ValueError):
        LatencyEstimator(censored_factor=0.5)
    with pytest.raises(ValueError):
        LatencyEstimator(stale_s=0.0)
