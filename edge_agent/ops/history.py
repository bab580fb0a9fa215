"""The dashboard's memory: the last 10 minutes of the per-second series, sampled once a second.

A page opened after a burst must still show the burst, so the agent (not the page) keeps
what the charts draw: one sample per second of the status document's chart numbers in a
bounded ring (``capacity`` samples, 600 = 10 min), sent as the ``history`` field of the
first ``/api/events`` message (see :mod:`edge_agent.ops.http`).

The same task also keeps the newest status document encoded once, so every open page
shares one ``status()`` call and one ``json.dumps`` per second: N pages cost N socket
writes, not N status documents.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

#: Series name -> path in the status document (what edge_agent/ops/dashboard/app.js charts).
SERIES: dict[str, tuple[str, ...]] = {
    "readings_per_s": ("rates", "readings_per_s"),
    "inferences_per_s": ("rates", "inferences_per_s"),
    "p50_ms": ("latency_ms", "p50"),
    "p95_ms": ("latency_ms", "p95"),
    "p99_ms": ("latency_ms", "p99"),
    "offload_share": ("offload_share",),
    "slo_attainment": ("slo_attainment",),
    "queue_depth": ("queue_depth",),
    "cpu_percent": ("node", "cpu_percent"),
    "gpu_percent": ("node", "gpu_percent"),
    "temperature_c": ("node", "temperature_c"),
    "slo_ms": ("slo_ms",),
}
CAPACITY = 600  # samples: 10 minutes at one per second
PERIOD_S = 1.0


def _number(doc: Any, path: tuple[str, ...]) -> float | None:
    for key in path:
        if not isinstance(doc, dict):
            return None
        doc = doc.get(key)
    if isinstance(doc, bool) or not isinstance(doc, int | float):
        return None
    return float(doc)


class History:
    """A bounded ring of per-second samples plus the newest status event, shared by pages."""

    def __init__(self, capacity: int = CAPACITY, period_s: float = PERIOD_S) -> None:
        self.period_s = period_s
        self._t: deque[float] = deque(maxlen=capacity)
        self._rows: deque[tuple[float | None, ...]] = deque(maxlen=capacity)
        self.latest: bytes | None = None  # the newest status document, JSON-encoded once
        self.samples = 0
        self._tick = asyncio.Event()

    def __len__(self) -> int:
        return len(self._t)

    @property
    def capacity(self) -> int:
        return self._t.maxlen or 0

    def record(self, doc: dict[str, Any], t: float) -> None:
        """Keep one sample of ``doc`` taken at wall time ``t`` and wake the waiting pages."""
        self._t.append(round(t, 3))
        self._rows.append(tuple(_number(doc, path) for path in SERIES.values()))
        self.latest = json.dumps(doc | {"ts": round(t, 3)}).encode()
        self.samples += 1
        tick, self._tick = self._tick, asyncio.Event()
        tick.set()

    def series(self) -> dict[str, list[float | None]]:
        """Column-wise: ``{"t": [...], "readings_per_s": [...], ...}``, oldest first."""
        out: dict[str, list[float | None]] = {"t": list(self._t)}
        for i, name in enumerate(SERIES):
            out[name] = [row[i] for row in self._rows]
        return out

    async def next(self, within_s: float) -> bool:
        """Wait for the next sample; False when none came within ``within_s``."""
        tick = self._tick
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(within_s):
                await tick.wait()
                return True
        return False

    async def run(self, status: Callable[[], dict[str, Any]]) -> None:
        """Sample ``status()`` once per period, on the period's wall-clock grid."""
        while True:
            try:
                self.record(status(), time.time())
            except Exception:  # a status bug must not end the dashboard's memory
                log.exception("status sample failed")
            await asyncio.sleep(self.period_s - time.time() % self.period_s)
