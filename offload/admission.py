"""Admission by bytes in flight: a bound on the memory concurrent large requests can pin.

Each transport reserves a request's size at the earliest point it knows it (gRPC: in the
message deserializer, before the protobuf is parsed; HTTP: from Content-Length, before the
body is read) and the reservation is released when the request is answered, or when its
last reference goes away (a cancelled call never leaks budget). Beyond the budget the
request is refused at once with RESOURCE_EXHAUSTED, so a burst of large (or large
malformed) requests cannot multiply into gigabytes of copies while small valid callers
keep being served.
"""

from __future__ import annotations

from prometheus_client import Gauge

from models.errors import Overloaded


class Reservation:
    """``nbytes`` of the budget, held until :meth:`release` (idempotent) or collection."""

    __slots__ = ("_budget", "nbytes")

    def __init__(self, budget: BytesInFlight | None, nbytes: int) -> None:
        self._budget = budget
        self.nbytes = nbytes

    def release(self) -> None:
        budget, self._budget = self._budget, None
        if budget is not None:
            budget._release(self.nbytes)

    def __del__(self) -> None:
        self.release()


class BytesInFlight:
    """A byte budget shared by all transports of one server (used from the event loop)."""

    def __init__(self, limit: int, gauge: Gauge | None = None) -> None:
        self.limit = limit
        self.in_flight = 0
        if gauge is not None:
            # Read at scrape time: setting the gauge on every reserve and release took a
            # lock twice per request for a value nobody reads between scrapes.
            gauge.set_function(lambda: self.in_flight)

    def reserve(self, nbytes: int) -> Reservation:
        if self.in_flight + nbytes > self.limit:
            raise Overloaded(
                f"request of {nbytes} bytes refused: {self.in_flight} bytes of requests in "
                f"flight, limit {self.limit} (--max-inflight-bytes); retry later"
            )
        self.in_flight += nbytes
        return Reservation(self, nbytes)

    def _release(self, nbytes: int) -> None:
        self.in_flight -= nbytes
