"""Inputs of the routing policy that need memory: service times per batch size and the
offload budget (cloud cost). Both take an injectable clock and hold no I/O."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

import numpy as np


class ServiceTimeModel:
    """Measured compute time per batch size (median of a recent window per size).

    Unseen sizes are predicted from an affine fit ``a + b * n`` over the sizes seen so
    far (batching makes cost grow slower than linearly, so the fit is a safe upper side
    for large batches once a few sizes are known); ``default_s`` until anything is seen.
    """

    def __init__(self, default_s: float = 0.005, window: int = 64) -> None:
        self.default_s = default_s
        self._window = window
        self._samples: dict[int, deque[float]] = {}

    def observe(self, batch_size: int, seconds: float) -> None:
        if batch_size < 1 or seconds < 0:
            return
        self._samples.setdefault(batch_size, deque(maxlen=self._window)).append(seconds)

    def estimate(self, batch_size: int) -> float:
        samples = self._samples.get(batch_size)
        if samples:
            return float(np.median(samples))
        if not self._samples:
            return self.default_s
        sizes = np.array(sorted(self._samples), dtype=float)
        medians = np.array([np.median(self._samples[int(s)]) for s in sizes])
        if len(sizes) == 1:
            return float(medians[0] * batch_size / sizes[0])
        slope, intercept = np.polyfit(sizes, medians, 1)
        return float(max(intercept + slope * batch_size, medians.min()))


class _Bucket:
    def __init__(self, rate: float, clock: Callable[[], float]) -> None:
        self.rate = rate
        self.capacity = max(rate, 1.0)  # one second of burst
        self.tokens = self.capacity
        self._clock = clock
        self._last = clock()

    def refill(self) -> None:
        now = self._clock()
        self.tokens = min(self.capacity, self.tokens + (now - self._last) * self.rate)
        self._last = now


class OffloadBudget:
    """Token buckets capping offloaded requests/s and bytes/s (None = unlimited)."""

    def __init__(
        self,
        max_requests_per_s: float | None = None,
        max_bytes_per_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._requests = _Bucket(max_requests_per_s, clock) if max_requests_per_s else None
        self._bytes = _Bucket(max_bytes_per_s, clock) if max_bytes_per_s else None

    def peek(self, requests: int, nbytes: int) -> bool:
        """Whether ``try_take`` would succeed now (takes nothing)."""
        for bucket, need in ((self._requests, requests), (self._bytes, nbytes)):
            if bucket is not None:
                bucket.refill()
                if bucket.tokens < need:
                    return False
        return True

    def try_take(self, requests: int, nbytes: int) -> bool:
        """Spend budget for one offload of ``requests`` requests and ``nbytes`` bytes."""
        if not self.peek(requests, nbytes):
            return False
        if self._requests is not None:
            self._requests.tokens -= requests
        if self._bytes is not None:
            self._bytes.tokens -= nbytes
        return True
