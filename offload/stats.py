"""Live estimates of the remote: EWMA and a windowed p95 of round trips and server time."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np


class LatencyEstimator:
    """EWMA plus a sliding window for tail quantiles; ``None`` until the first sample."""

    def __init__(self, alpha: float = 0.2, window: int = 256) -> None:
        if not 0 < alpha <= 1:
            raise ValueError("alpha must be in (0, 1]")
        self.alpha = alpha
        self._ewma: float | None = None
        self._window: deque[float] = deque(maxlen=window)
        self._quantiles: dict[float, float] = {}  # policies read far more often than calls end

    def observe(self, seconds: float) -> None:
        self._ewma = (
            seconds if self._ewma is None else self._ewma + self.alpha * (seconds - self._ewma)
        )
        self._window.append(seconds)
        self._quantiles.clear()

    @property
    def ewma(self) -> float | None:
        return self._ewma

    def quantile(self, q: float) -> float | None:
        if not self._window:
            return None
        value = self._quantiles.get(q)
        if value is None:
            window = np.fromiter(self._window, float, len(self._window))
            value = self._quantiles[q] = float(np.quantile(window, q))
        return value

    @property
    def count(self) -> int:
        return len(self._window)


@dataclass(frozen=True)
class RemoteStats:
    """What the routing policy and the dashboards see of one remote (seconds).

    Estimates are 0.0 until the first successful call.
    """

    rtt_ewma_s: float
    rtt_p95_s: float
    server_ewma_s: float
    breaker_state: str
    calls: int
    failures: int
