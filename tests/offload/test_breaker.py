"""Circuit breaker transitions with a fake clock."""

from __future__ import annotations

import pytest

from offload.breaker import BreakerConfig, BreakerState, CircuitBreaker


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_opens_after_consecutive_failures_and_refuses_while_open() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(BreakerConfig(failure_threshold=3, open_s=5.0), clock)
    for _ in range(2):
        assert breaker.acquire()
        breaker.record_failure()
    breaker.acquire()
    breaker.record_success()  # a success resets the count
    for _ in range(2):
        breaker.acquire()
        breaker.record_failure()
    assert breaker.state is BreakerState.CLOSED
    breaker.acquire()
    breaker.record_failure()
    assert breaker.state is BreakerState.OPEN
    assert not breaker.allows() and not breaker.acquire()
    clock.now = 4.9
    assert breaker.state is BreakerState.OPEN


def test_half_open_probe_closes_or_reopens() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(
        BreakerConfig(failure_threshold=1, open_s=1.0, half_open_probes=2), clock
    )
    breaker.acquire()
    breaker.record_failure()
    clock.now = 1.0
    assert breaker.state is BreakerState.HALF_OPEN
    assert breaker.acquire() and breaker.acquire()
    assert not breaker.acquire()  # only two probes at once
    breaker.record_failure()  # a failed probe re-opens for another open_s
    assert breaker.state is BreakerState.OPEN
    clock.now = 1.5
    assert not breaker.allows()
    clock.now = 2.0
    assert breaker.acquire()
    breaker.record_success()
    assert breaker.state is BreakerState.CLOSED and breaker.allows()


def test_release_frees_a_probe_without_judging_the_remote() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(BreakerConfig(failure_threshold=1, open_s=0.0), clock)
    breaker.acquire()
    breaker.record_failure()
    assert breaker.state is BreakerState.HALF_OPEN
    assert breaker.acquire() and not breaker.acquire()
    breaker.release()
    assert breaker.acquire()


def test_config_is_validated() -> None:
    with pytest.raises(ValueError):
        BreakerConfig(failure_threshold=0)
    with pytest.raises(ValueError):
        BreakerConfig(open_s=-1)


def test_deadline_miss_is_charged_only_with_a_fair_budget() -> None:
    config = BreakerConfig(deadline_floor_s=0.25)
    p95 = 0.060  # measured successful round trips over a 40 ms WAN
    assert not config.charges_deadline_miss(0.005, p95)  # arrived with almost no budget
    assert not config.charges_deadline_miss(0.045, p95)  # below what the remote needs
    assert config.charges_deadline_miss(0.060, p95)  # covered the remote's own p95
    assert config.charges_deadline_miss(0.100, p95)
    # Before anything is measured, only a budget at the floor proves the remote slow.
    assert not config.charges_deadline_miss(0.100, None)
    assert config.charges_deadline_miss(0.250, None)
    # A remote that got slow everywhere still trips the breaker once budgets hit the floor.
    assert config.charges_deadline_miss(0.300, 2.0)
    with pytest.raises(ValueError):
        BreakerConfig(deadline_floor_s=0.0)


def test_excused_misses_leave_the_breaker_closed_and_charged_ones_open_it() -> None:
    """The client's bookkeeping for a burst of doomed requests, then a real stall."""
    clock = FakeClock()
    config = BreakerConfig(failure_threshold=3, open_s=1.0)
    breaker = CircuitBreaker(config, clock)
    p95 = 0.060
    for budget in [0.002, 0.010, 0.030, 0.001, 0.020, 0.040]:
        assert breaker.acquire()
        if config.charges_deadline_miss(budget, p95):
            breaker.record_failure()
        else:
            breaker.release()
    assert breaker.state is BreakerState.CLOSED
    for _ in range(3):
        assert breaker.acquire()
        assert config.charges_deadline_miss(0.090, p95)
        breaker.record_failure()
    assert breaker.state is BreakerState.OPEN
