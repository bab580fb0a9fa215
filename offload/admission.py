"""Admission by bytes in flight: a bound on the memory concurrent large requests can pin.

Every inference request (gRPC or HTTP) is admitted with its size before anything is
decoded, and released when it is answered. Beyond the budget the request is refused at
once with RESOURCE_EXHAUSTED, so a burst of large (or large malformed) requests cannot
multiply into gigabytes of copies while valid small callers keep being served.
"""

from __future__ import annotations

from prometheus_client import Gauge

from models.errors import Overloaded


class BytesInFlight:
    """A byte budget shared by all transports of one server (event-loop only)."""

    def __init__(self, limit: int, gauge: Gauge | None = None) -> None:
        self.limit = limit
        self.in_flight = 0
        self._gauge = gauge

    def acquire(self, nbytes: int) -> None:
        if self.in_flight + nbytes > self.limit:
            raise Overloaded(
                f"request of {nbytes} bytes refused: {self.in_flight} bytes of requests in "
                f"flight, limit {self.limit} (--max-inflight-bytes); retry later"
            )
        self.in_flight += nbytes
        if self._gauge is not None:
            self._gauge.set(self.in_flight)

    def release(self, nbytes: int) -> None:
        self.in_flight -= nbytes
        if self._gauge is not None:
            self._gauge.set(self.in_flight)
