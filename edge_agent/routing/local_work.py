"""Local batches handed to the inference executor, and how long a new one would wait.

The router needs the wait until a local worker is free. Assuming that every busy worker
holds a full ``max_batch`` batch that has just started overstated it at moderate load
and sent batches to the cloud that the device would have answered in time. So each
batch is tracked from submission: its size and the moment its compute really started
(hedge twins and fallbacks can be submitted while every worker is busy, and wait in the
executor's FIFO). The start is written on a worker thread and read on the MQTT thread
(inline batches), hence the lock.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from edge_agent.routing.batch import BatchDone


@dataclass(slots=True)
class _Entry:
    done: BatchDone
    start: float | None = None  # monotonic compute start; None while queued


class LocalWork:
    """Batches submitted to the executor and not finished, in submission order."""

    def __init__(self) -> None:
        self._running: dict[int, _Entry] = {}
        self._lock = threading.Lock()
        self._ids = itertools.count()

    def submit(self, done: BatchDone, job: Callable[[], None]) -> tuple[int, Callable[[], None]]:
        """Track ``done``; returns its token and the executor job that records the start."""
        token = next(self._ids)
        entry = _Entry(done)
        with self._lock:
            self._running[token] = entry

        def tracked() -> None:
            with self._lock:
                entry.start = time.monotonic()  # compute starts now, not at submission
            job()

        return token, tracked

    def finished(self, token: int) -> None:
        with self._lock:
            del self._running[token]

    def __len__(self) -> int:
        return len(self._running)

    def started(self) -> int:
        """How many tracked batches have begun computing on a worker."""
        with self._lock:
            return sum(e.start is not None for e in self._running.values())

    def wait(self, now: float, workers: int, estimate: Callable[[int], float]) -> float:
        """Estimated seconds until a worker is free to start one more batch.

        0 while a worker is idle. Otherwise the worker whose batch has the least estimated
        compute left frees first; batches still queued take freed workers in order first
        (a hedge twin already superseded by the cloud's answer costs nothing).
        """
        with self._lock:
            entries = [(e.done, e.start) for e in self._running.values()]
        if len(entries) < workers:
            return 0.0
        free = [
            max(0.0, estimate(len(done.requests)) - (now - start))
            for done, start in entries
            if start is not None
        ]
        free += [0.0] * (workers - len(free))  # a worker between two queued jobs
        heapq.heapify(free)
        for done, start in entries:
            if start is None:
                cost = 0.0 if done.superseded else estimate(len(done.requests))
                heapq.heapreplace(free, free[0] + cost)
        return free[0]
