"""A circuit breaker (closed / open / half-open) with an injectable clock.

Closed: calls flow; ``failure_threshold`` consecutive failures open it. Open: calls are
refused until ``open_s`` has passed. Half-open: up to ``half_open_probes`` calls probe the
remote; ``success_threshold`` successes close it, any failure re-opens it.
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

    def __post_init__(self) -> None:
        if self.failure_threshold < 1 or self.half_open_probes < 1 or self.success_threshold < 1:
            raise ValueError("breaker thresholds and probes must be >= 1")
        if self.open_s < 0:
            raise ValueError("open_s must be >= 0")


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
