"""ServiceTimeModel and OffloadBudget with a fake clock."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from edge_agent.routing.estimates import OffloadBudget, ServiceTimeModel


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


def _reference(history: dict[int, list[float]], window: int, n: int, default: float) -> float:
    """The model's definition, recomputed from scratch: medians, then a least-squares line."""
    medians = {k: float(np.median(v[-window:])) for k, v in history.items()}
    if n in medians:
        return medians[n]
    if not medians:
        return default
    sizes = np.array(sorted(medians), dtype=float)
    ys = np.array([medians[int(k)] for k in sizes])
    if len(sizes) == 1:
        return float(ys[0] * n / sizes[0])
    slope, intercept = np.polyfit(sizes, ys, 1)
    return float(max(intercept + slope * n, ys.min()))


@pytest.mark.parametrize("resync_every", [1, 7, 1024])
def test_incremental_fit_matches_a_full_refit(resync_every: int) -> None:
    """Medians and fit are kept incrementally; every answer equals a from-scratch refit."""
    rng = np.random.default_rng(11)
    window = 8  # small, so samples are evicted and medians move both ways
    model = ServiceTimeModel(default_s=0.01, window=window, resync_every=resync_every)
    history: dict[int, list[float]] = {}
    for step in range(600):
        size = int(rng.choice([1, 2, 4, 8, 16, 32, 48, 64]))
        seconds = float(0.0004 + 0.00005 * size + rng.exponential(0.0002))
        if step % 97 == 0:
            seconds *= 50  # outliers, including a new global minimum's removal later
        model.observe(size, seconds)
        history.setdefault(size, []).append(seconds)
        for n in (3, 24, 100, size):
            assert model.estimate(n) == pytest.approx(
                _reference(history, window, n, 0.01), rel=1e-9, abs=1e-12
            )


def test_estimate_tracks_each_observation_at_once() -> None:
    """No stale cache: an observation changes the next estimate, seen or unseen size."""
    model = ServiceTimeModel(window=1)
    model.observe(1, 0.001)
    model.observe(10, 0.010)
    assert model.estimate(5) == pytest.approx(0.005)
    model.observe(10, 0.019)  # window 1: the median of size 10 is now 19 ms
    assert model.estimate(5) == pytest.approx(0.001 + 0.002 * 4)
    model.observe(1, 0.015)  # the smallest median grew: the floor follows it
    assert model.estimate(100) == pytest.approx(0.015 + (0.019 - 0.015) / 9 * 99)
    assert model.estimate(0) == pytest.approx(0.015)  # never below the smallest median


def test_ignores_invalid_observations_and_is_thread_safe() -> None:
    model = ServiceTimeModel(default_s=0.5, window=16)
    model.observe(0, 0.1)
    model.observe(4, -1.0)
    assert model.estimate(4) == 0.5

    def worker(size: int) -> None:
        for i in range(2000):
            model.observe(size, 0.001 * size + (i % 5) * 1e-5)
            model.estimate(size + 100)

    threads = [threading.Thread(target=worker, args=(s,)) for s in (1, 2, 3, 4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    history = {s: [0.001 * s + (i % 5) * 1e-5 for i in range(2000)] for s in (1, 2, 3, 4)}
    for n in (1, 3, 8, 64):
        assert model.estimate(n) == pytest.approx(_reference(history, 16, n, 0.5), rel=1e-9)


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


def test_reset_forgets_history_and_takes_a_seed() -> None:
    model = ServiceTimeModel(default_s=0.005)
    for _ in range(5):
        model.observe(1, 0.001)
        model.observe(8, 0.002)
    model.reset({1: 0.3, 8: 0.31})
    assert model.estimate(1) == 0.3
    assert model.estimate(8) == 0.31
    model.reset()
    assert model.estimate(4) == 0.005
