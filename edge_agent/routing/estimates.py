"""Inputs of the routing policy that need memory: service times per batch size and the
offload budget (cloud cost). Both take an injectable clock and hold no I/O."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable


class ServiceTimeModel:
    """Measured compute time per batch size (median of a recent window per size).

    Unseen sizes are predicted from an affine least-squares fit ``a + b * n`` over the
    per-size medians (batching makes cost grow slower than linearly, so the fit is a safe
    upper side for large batches once a few sizes are known); ``default_s`` until
    anything is seen.

    The routing path asks for estimates several times per batch, so both the medians and
    the fit are maintained incrementally: :meth:`observe` re-medians only the size it
    touched (``O(window)``) and updates the fit's running sums; :meth:`estimate` is
    ``O(1)``. The float sums are rebuilt from the medians every ``resync_every`` updates
    so rounding cannot accumulate. Thread-safe: the MQTT thread (inline batches) and the
    event loop both observe and estimate.
    """

    def __init__(
        self, default_s: float = 0.005, window: int = 64, resync_every: int = 1024
    ) -> None:
        self.default_s = default_s
        self._window = window
        self._resync_every = max(1, resync_every)
        self._samples: dict[int, deque[float]] = {}
        self._median: dict[int, float] = {}
        self._lock = threading.Lock()
        # Least-squares sums over (size, median) points; x sums are exact integers.
        self._sx = 0
        self._sxx = 0
        self._sy = 0.0
        self._sxy = 0.0
        self._min: float = 0.0
        self._updates = 0

    def reset(self, seed: dict[int, float] | None = None) -> None:
        """Forget every observation (a new model version serves), then observe ``seed``."""
        with self._lock:
            self._samples.clear()
            self._median.clear()
            self._sx = self._sxx = 0
            self._sy = self._sxy = 0.0
            self._min = 0.0
            self._updates = 0
        for size, seconds in (seed or {}).items():
            self.observe(size, seconds)

    def observe(self, batch_size: int, seconds: float) -> None:
        if batch_size < 1 or seconds < 0:
            return
        with self._lock:
            samples = self._samples.get(batch_size)
            if samples is None:
                samples = self._samples[batch_size] = deque(maxlen=self._window)
                self._sx += batch_size
                self._sxx += batch_size * batch_size
                old = None
            else:
                old = self._median[batch_size]
            samples.append(seconds)
            new = _median(samples)
            self._median[batch_size] = new
            self._updates += 1
            if self._updates % self._resync_every == 0:
                self._resync()
                return
            if old is not None:
                self._sy -= old
                self._sxy -= batch_size * old
            self._sy += new
            self._sxy += batch_size * new
            if old is None or new <= self._min:
                self._min = new if len(self._median) == 1 else min(self._min, new)
            elif old <= self._min:  # the smallest median grew: it may no longer be the min
                self._min = min(self._median.values())

    def _resync(self) -> None:
        med = self._median
        self._sy = sum(med.values())
        self._sxy = sum(n * m for n, m in med.items())
        self._min = min(med.values())

    def estimate(self, batch_size: int) -> float:
        median = self._median.get(batch_size)
        if median is not None:
            return median
        with self._lock:
            k = len(self._median)
            if k == 0:
                return self.default_s
            if k == 1:
                ((size, m),) = self._median.items()
                return m * batch_size / size
            denom = k * self._sxx - self._sx * self._sx  # > 0: at least two distinct sizes
            slope = (k * self._sxy - self._sx * self._sy) / denom
            intercept = (self._sy - slope * self._sx) / k
            return max(intercept + slope * batch_size, self._min)


def _median(values: deque[float]) -> float:
    s = sorted(values)
    mid = len(s) // 2
    return s[mid] if len(s) % 2 else (s[mid - 1] + s[mid]) / 2.0


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
