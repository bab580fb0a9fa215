"""Time-based latency quantiles: ageing, reset on a model swap, exact values, bounded memory."""

from __future__ import annotations

import numpy as np
import pytest

from edge_agent.ops.stats import LatencyWindow, Stats


class FakeClock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def _stats(clock: FakeClock, window_s: int = 60, cap: int = 32768) -> Stats:
    return Stats(window_s=window_s, cap=cap, clock=clock)


def _record(st: Stats, latencies_s: list[float] | np.ndarray) -> None:
    lat = np.asarray(latencies_s, dtype=np.float64)
    st.record_batch("local", lat, met=len(lat), compute_s=0.001)


def test_empty_window_reports_zeros() -> None:
    st = _stats(FakeClock())
    assert st.quantiles_ms() == {"p50": 0.0, "p95": 0.0, "p99": 0.0}


def test_quantiles_match_numpy_on_known_data() -> None:
    clock = FakeClock()
    st = _stats(clock)
    data = np.arange(1, 1001, dtype=np.float64) / 1000.0  # 1..1000 ms
    for chunk in np.array_split(data, 10):  # spread over ten seconds
        _record(st, chunk)
        clock.t += 1.0
    q = st.quantiles_ms()
    expected = np.percentile(data, [50, 95, 99]) * 1000.0
    assert q == {
        "p50": round(float(expected[0]), 3),
        "p95": round(float(expected[1]), 3),
        "p99": round(float(expected[2]), 3),
    }
    assert q["p50"] == pytest.approx(500.5)
    assert q["p99"] == pytest.approx(990.01)


def test_old_samples_age_out() -> None:
    clock = FakeClock()
    st = _stats(clock, window_s=60)
    _record(st, [0.5] * 200)  # a slow burst, e.g. the queue behind a swap
    clock.t += 30.0
    _record(st, [0.01] * 200)
    assert st.quantiles_ms()["p99"] == pytest.approx(500.0)
    clock.t += 31.0  # the burst is now 61 s old, the fast results 31 s
    q = st.quantiles_ms()
    assert q["p99"] == pytest.approx(10.0)
    assert len(st.latency) == 200
    clock.t += 30.0  # everything is older than the window
    assert st.quantiles_ms() == {"p50": 0.0, "p95": 0.0, "p99": 0.0}
    assert len(st.latency) == 0


def test_reused_bucket_drops_the_second_it_held() -> None:
    clock = FakeClock()
    st = _stats(clock, window_s=10)
    _record(st, [0.9] * 50)
    clock.t += 10.0  # same ring slot, a new second
    _record(st, [0.002] * 5)
    assert st.quantiles_ms()["p99"] == pytest.approx(2.0)
    assert len(st.latency) == 5


def test_model_swap_resets_the_window_but_a_reload_does_not() -> None:
    clock = FakeClock()
    st = _stats(clock)
    st.model_changed("m:1")
    _record(st, [0.2] * 1000)
    st.model_changed("m:1")  # same version re-announced: keep its history
    assert st.quantiles_ms()["p50"] == pytest.approx(200.0)
    st.model_changed("m:2")
    assert st.quantiles_ms() == {"p50": 0.0, "p95": 0.0, "p99": 0.0}
    _record(st, [0.004] * 10)
    assert st.quantiles_ms() == {"p50": 4.0, "p95": 4.0, "p99": 4.0}
    # Lifetime counters are not latency-window state: they survive the swap.
    assert st.results == 1010
    st.model_changed("m:1")  # a rollback is a version change too
    assert len(st.latency) == 0


def test_memory_is_bounded_and_busy_seconds_keep_their_weight() -> None:
    clock = FakeClock()
    st = _stats(clock, window_s=10, cap=1000)  # 100 samples per second
    buf = st.latency._vals
    before = buf.nbytes
    # One busy second of 10 000 slow results and nine quiet seconds of 50 fast ones.
    for _ in range(10):
        _record(st, [0.1] * 1000)
    for _ in range(9):
        clock.t += 1.0
        _record(st, [0.001] * 50)
    assert st.latency._vals is buf and buf.nbytes == before == 1000 * 8
    assert len(st.latency) == 10_450
    # 99% of the results in the window were slow: the quiet seconds must not hide that
    # just because the busy one could store only 100 of its samples.
    # Unweighted, the 450 stored fast samples would outnumber the 100 stored slow ones.
    q = st.quantiles_ms()
    assert q["p50"] == pytest.approx(100.0)
    assert q["p95"] == pytest.approx(100.0)
    assert np.percentile(buf[buf > 0], 50) == pytest.approx(0.001)


def test_a_batch_larger_than_a_bucket_keeps_its_latest_samples() -> None:
    w = LatencyWindow(window_s=4, cap=8, clock=FakeClock())  # 2 per bucket
    w.add(np.array([0.1, 0.2, 0.3, 0.4, 0.5]))
    q = w.quantiles([0, 100])
    assert q is not None
    assert list(q) == [0.4, 0.5]
    assert len(w) == 5
