"""ServiceTimeModel and OffloadBudget with a fake clock."""

from __future__ import annotations

import pytest

from offload.estimates import OffloadBudget, ServiceTimeModel


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_service_time_model_uses_measured_history() -> None:
    model = ServiceTimeModel(default_s=0.123)
    assert model.estimate(4) == 0.123
    for seconds in (0.010, 0.012, 0.011, 0.500):  # one outlier: the median ignores it
        model.observe(1, seconds)
    assert model.estimate(1) == pytest.approx(0.0115)
    assert model.estimate(8) == pytest.approx(0.0115 * 8)  # one size known: proportional
    for _ in range(3):
        model.observe(16, 0.031)
    # Two sizes known: affine fit through (1, 11.5 ms) and (16, 31 ms).
    assert model.estimate(8) == pytest.approx(0.0115 + (0.031 - 0.0115) * 7 / 15)
    assert model.estimate(16) == pytest.approx(0.031)


def test_budget_limits_requests_per_second() -> None:
    clock = FakeClock()
    budget = OffloadBudget(max_requests_per_s=10, clock=clock)
    assert all(budget.try_take(1, 0) for _ in range(10))
    assert not budget.peek(1, 0) and not budget.try_take(1, 0)  # budget exhausted
    clock.now += 0.25
    assert budget.try_take(2, 0) and not budget.try_take(1, 0)  # 2.5 tokens came back
    clock.now += 10
    assert budget.try_take(10, 0) and not budget.try_take(1, 0)  # capped at one second's worth


def test_budget_limits_bytes_and_peek_takes_nothing() -> None:
    clock = FakeClock()
    budget = OffloadBudget(max_bytes_per_s=1000, clock=clock)
    assert budget.peek(1, 800) and budget.peek(1, 800)
    assert budget.try_take(1, 800) and not budget.try_take(1, 800)
    clock.now += 0.61  # 200 left + 610 refilled
    assert budget.try_take(1, 800)
    unlimited = OffloadBudget(clock=clock)
    assert all(unlimited.try_take(1000, 10**9) for _ in range(100))
