"""The dashboard's memory: a bounded ring of per-second samples, shared encoded status."""

from __future__ import annotations

import asyncio
import json

from edge_agent.ops.history import SERIES, History


def _doc(i: int) -> dict:
    return {
        "rates": {"readings_per_s": float(i), "inferences_per_s": i / 10},
        "latency_ms": {"p50": 1.0, "p95": 2.0, "p99": None},
        "offload_share": 0.5,
        "slo_attainment": True,  # not a number: recorded as a gap
        "queue_depth": 3,
        "node": {"cpu_percent": 12.5, "gpu_percent": None, "temperature_c": 40},
        "slo_ms": 50.0,
    }


async def test_ring_is_bounded_and_column_wise() -> None:
    h = History(capacity=5)
    for i in range(12):
        h.record(_doc(i), 1000.0 + i)
    assert len(h) == 5 and h.samples == 12
    series = h.series()
    assert set(series) == {"t", *SERIES}
    assert series["t"] == [1007.0, 1008.0, 1009.0, 1010.0, 1011.0]
    assert series["readings_per_s"] == [7.0, 8.0, 9.0, 10.0, 11.0]
    assert series["p99_ms"] == [None] * 5 and series["slo_attainment"] == [None] * 5
    assert series["temperature_c"] == [40.0] * 5 and series["slo_ms"] == [50.0] * 5
    latest = json.loads(h.latest or b"{}")
    assert latest["ts"] == 1011.0 and latest["rates"]["readings_per_s"] == 11.0


async def test_pages_wake_on_each_sample() -> None:
    h = History()
    assert await h.next(within_s=0.05) is False  # nothing sampled: the caller asks itself
    waiter = asyncio.create_task(h.next(within_s=2.0))
    await asyncio.sleep(0)
    h.record(_doc(1), 1.0)
    assert await waiter is True
