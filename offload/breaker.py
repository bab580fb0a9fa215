"""A circuit breaker (closed / open / half-open) with an injectable clock.

Closed: calls flow; ``failure_threshold`` consecutive failures open it. Open: calls are
refused until ``open_s`` has passed. Half-open: up to ``half_open_probes`` calls probe the
remote; ``success_threshold`` successes close it, any failure re-opens it.

What counts as a failure is the caller's choice, except for one rule kept here with the
config it reads: a missed deadline is only charged to the remote when the budget was fair
(:meth:`BreakerConfig.charges_deadline_miss`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half-open"


@dataclass(frozen=True)
class BreakerConfig:
    failure_threshold: int = 5
    open_s: float = 2.0
    half_open_probes: int = 1
    success_threshold: int = 1
    #: A deadline miss with at least this much budget always counts against the remote
    #: (and, before any successful call has been measured, only such misses count).
    deadline_floor_s: float = 0.25

    def __post_init__(self) -> None:
        if self.failure_threshold < 1 or self.half_open_probes < 1 or self.success_threshold < 1:
            raise ValueError("breaker thresholds and probes must be >= 1")
        if self.open_s < 0:
            raise ValueError("open_s must be >= 0")
        if self.deadline_floor_s <= 0:
            raise ValueError("deadline_floor_s must be > 0")

    def charges_deadline_miss(self, budget_s: float, answer_p95_s: float | None) -> bool:
        """Whether a call that ran out of ``budget_s`` says the remote is unhealthy.

        ``answer_p95_s`` is the p95 of the remote's *successful* round trips (None before
        the first). A request that arrived with less budget than the remote usually needs
        would have missed against a perfectly healthy remote: opening the breaker for it
        would push all traffic onto the edge device for the caller's problem. A budget
        that covers the remote's own p95 (or the floor) should have been met.
        """
        if budget_s >= self.deadline_floor_s:
            return True
        return answer_p95_s is not None and budget_s >= answer_p95_s


class CircuitBreaker:
    """Not thread-safe: use it from one event loop."""

    def __init__(
        self, config: BreakerConfig | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.config = config or BreakerConfig()
        self._clock = clock
        self._state = BreakerState.CLOSED
        self._failures = 0
        self._successes = 0
        self._opened_at = 0.0
        self._probes = 0
        self.transitions = 0

    @property
    def state(self) -> BreakerState:
        """The current state (an open breaker whose time is up reads as half-open)."""
        if (
            self._state is BreakerState.OPEN
            and self._clock() - self._opened_at >= self.config.open_s
        ):
            self._to(BreakerState.HALF_OPEN)
        return self._state

    def allows(self) -> bool:
        """Whether a call may start now, without reserving a probe slot."""
        state = self.state
        if state is BreakerState.CLOSED:
            return True
        if state is BreakerState.HALF_OPEN:
            return self._probes < self.config.half_open_probes
        return False

    def acquire(self) -> bool:
        """Reserve permission for one call; every True must be followed by a record_*."""
        if not self.allows():
            return False
        if self._state is BreakerState.HALF_OPEN:
            self._probes += 1
        return True

    def record_success(self) -> None:
        if self._state is BreakerState.HALF_OPEN:
            self._probes = max(0, self._probes - 1)
            self._successes += 1
            if self._successes >= self.config.success_threshold:
                self._to(BreakerState.CLOSED)
        self._failures = 0

    def record_failure(self) -> None:
        if self._state is BreakerState.HALF_OPEN:
            self._probes = max(0, self._probes - 1)
            self._open()
            return
        self._failures += 1
        if self._state is BreakerState.CLOSED and self._failures >= self.config.failure_threshold:
            self._open()

    def release(self) -> None:
        """A reserved call ended without telling anything about the remote (e.g. bad input)."""
        if self._state is BreakerState.HALF_OPEN:
            self._probes = max(0, self._probes - 1)

    def _open(self) -> None:
        self._opened_at = self._clock()
        self._to(BreakerState.OPEN)

    def _to(self, state: BreakerState) -> None:
        if state is self._state:
            return
        self._state = state
        self._failures = 0
        self._successes = 0
        self._probes = 0
        self.transitions += 1
