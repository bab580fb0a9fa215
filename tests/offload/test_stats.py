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
