"""Rate-limited logging for failures that repeat per reading (a full disk, a dead peer).

One line per failure per reading is how a full disk gets fuller: the first occurrence is
logged at once, repeats are counted and summarised at most every ``every_s`` seconds.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable


class LogLimiter:
    """Logs the first of a run of repeated events, then one summary line per interval."""

    def __init__(
        self,
        logger: logging.Logger,
        every_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._log = logger
        self._every = every_s
        self._clock = clock
        self._next = 0.0
        self._suppressed = 0
        self._lock = threading.Lock()  # producers and a writer thread may both report
        self.emitted = 0

    def __call__(self, level: int, msg: str, *args: object) -> None:
        now = self._clock()
        with self._lock:
            if now < self._next:
                self._suppressed += 1
                return
            suppressed, self._suppressed = self._suppressed, 0
            self._next = now + self._every
            self.emitted += 1
        if suppressed:
            msg = f"{msg} (and {suppressed} more like it in the last {self._every:.0f}s)"
        self._log.log(level, msg, *args)

    def reset(self) -> None:
        """The failure ended: the next one is logged at once."""
        with self._lock:
            self._next = 0.0
            self._suppressed = 0
