"""Live estimates of the remote: EWMA and a windowed p95 of round trips and server time.

Failed and timed-out calls enter as *censored* samples: the call took at least the time
it ran, so a stalled remote pushes the estimates up instead of leaving them frozen at the
last good answers. A censored sample is only informative when it ran at least as long as a
typical answer (the EWMA of successful calls); a request that gave up after 5 ms says
nothing about a 40 ms remote. It is recorded inflated by ``censored_factor`` because the
true time lies beyond it. Censored evidence expires ``stale_s`` after it was recorded: once
routing stops sending to a stalled remote no new samples would ever arrive, and the
estimates must fall back to the measured successes so that the remote gets tried again.
"""

from __future__ import annotations

import itertools
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


class LatencyEstimator:
    """EWMA plus a sliding window for tail quantiles; ``None`` until the first sample.

    ``ewma`` and ``quantile`` blend successes with live censored samples (what routing
    should expect); ``exact_ewma`` and ``exact_quantile`` see successes only (what the
    remote does when it answers, used to judge whether a deadline was fair).
    """

    def __init__(
        self,
        alpha: float = 0.2,
        window: int = 256,
        *,
        censored_factor: float = 1.5,
        stale_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not 0 < alpha <= 1:
            raise ValueError("alpha must be in (0, 1]")
        if censored_factor < 1 or stale_s <= 0:
            raise ValueError("censored_factor must be >= 1 and stale_s > 0")
        self.alpha = alpha
        self.censored_factor = censored_factor
        self.stale_s = stale_s
        self._clock = clock
        self._ewma: float | None = None
        self._exact_ewma: float | None = None
        self._window: deque[float] = deque(maxlen=window)
        self._censored: deque[tuple[float, float]] = deque(maxlen=window)  # (at, seconds)
        # Policies read far more often than calls end.
        self._quantiles: dict[tuple[float, bool], float] = {}

    def observe(self, seconds: float) -> None:
        """One successful call's duration."""
        self._ewma = self._step(self._ewma, seconds)
        self._exact_ewma = self._step(self._exact_ewma, seconds)
        self._window.append(seconds)
        self._quantiles.clear()

    def observe_censored(self, seconds: float) -> bool:
        """A call that failed after ``seconds``; returns whether it was informative."""
        typical = self._exact_ewma
        if typical is not None and seconds < typical:
            return False
        value = seconds * self.censored_factor
        self._expire()
        self._ewma = self._step(self._ewma, value)
        self._censored.append((self._clock(), value))
        self._quantiles.clear()
        return True

    def _step(self, current: float | None, seconds: float) -> float:
        return seconds if current is None else current + self.alpha * (seconds - current)

    def _expire(self) -> None:
        censored = self._censored
        if not censored:
            return
        limit = self._clock() - self.stale_s
        if censored[0][0] > limit:
            return
        while censored and censored[0][0] <= limit:
            censored.popleft()
        self._quantiles.clear()
        if not censored:
            self._ewma = self._exact_ewma

    @property
    def ewma(self) -> float | None:
        self._expire()
        return self._ewma

    @property
    def exact_ewma(self) -> float | None:
        return self._exact_ewma

    def quantile(self, q: float) -> float | None:
        self._expire()
        return self._quantile(q, exact=False)

    def exact_quantile(self, q: float) -> float | None:
        return self._quantile(q, exact=True)

    def _quantile(self, q: float, *, exact: bool) -> float | None:
        value = self._quantiles.get((q, exact))
        if value is not None:
            return value
        samples = (
            self._window
            if exact or not self._censored
            else itertools.chain(self._window, (s for _, s in self._censored))
        )
        n = len(self._window) + (0 if exact else len(self._censored))
        if n == 0:
            return None
        value = self._quantiles[(q, exact)] = float(np.quantile(np.fromiter(samples, float, n), q))
        return value

    @property
    def count(self) -> int:
        """Successful samples in the window."""
        return len(self._window)

    @property
    def censored_count(self) -> int:
        """Live (not yet expired) censored samples."""
        self._expire()
        return len(self._censored)


@dataclass(frozen=True)
class RemoteStats:
    """What the routing policy and the dashboards see of one remote (seconds).

    Estimates are 0.0 until the first call ends with a success or an informative failure
    (see :class:`LatencyEstimator`). ``failures`` counts every call that ended without a
    result other than the remote refusing the request (bad input, unknown model);
    ``excused`` counts the deadline misses among them that were not charged to the remote
    because the caller's budget was below what the remote needs (they never feed the
    breaker).
    """

    rtt_ewma_s: float
    rtt_p95_s: float
    server_ewma_s: float
    breaker_state: str
    calls: int
    failures: int
    excused: int = 0
