"""Sensor-time deadlines: the latency clock starts at the reading's ``ts``.

Unit tests drive :class:`LatencyClock` with fake wall and monotonic clocks; the
acceptance test sends readings with old timestamps through a real mosquitto and agent.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge_agent.ingest.deadlines import LatencyClock
from tests.edge_agent.conftest import OffloadServer, agent_settings, publisher, reading


class Clocks:
    """A wall clock and a monotonic clock that advance together (or not, to skew them)."""

    def __init__(self) -> None:
        self.wall_now = 1_800_000_000.0
        self.mono_now = 500.0

    def wall(self) -> float:
        return self.wall_now

    def mono(self) -> float:
        return self.mono_now

    def advance(self, s: float) -> None:
        self.wall_now += s
        self.mono_now += s


def _clock(c: Clocks, **kw: Any) -> LatencyClock:
    return LatencyClock(0.1, wall=c.wall, mono=c.mono, **kw)


def test_age_at_arrival_moves_origin_and_deadline_back() -> None:
    c = Clocks()
    lc = _clock(c)
    ts = c.wall_now - 0.25  # published 250 ms before we read it
    arrival = c.mono_now
    c.advance(0.004)  # the window completes 4 ms later in the burst: not sensor age
    origin, deadline = lc.window(ts, arrival)
    assert origin == pytest.approx(arrival - 0.25)
    assert deadline == pytest.approx(arrival - 0.15)  # already 150 ms late on arrival
    assert lc.skewed == 0


def test_fresh_reading_gets_the_full_slo() -> None:
    c = Clocks()
    lc = _clock(c)
    origin, deadline = lc.window(c.wall_now - 0.002, c.mono_now)
    assert origin == pytest.approx(c.mono_now - 0.002)
    assert deadline == pytest.approx(c.mono_now + 0.098)


def test_sensor_ahead_is_clamped_and_far_ahead_is_skew() -> None:
    c = Clocks()
    lc = _clock(c, max_clock_skew_s=30.0)
    assert lc.window(c.wall_now + 2.0, c.mono_now) == (c.mono_now, c.mono_now + 0.1)
    assert lc.skewed == 0  # within the allowance: clamped, not counted
    assert lc.window(c.wall_now + 31.0, c.mono_now) == (c.mono_now, c.mono_now + 0.1)
    assert lc.skewed == 1


def test_age_beyond_allowance_is_clock_skew_timed_from_arrival() -> None:
    c = Clocks()
    lc = _clock(c, max_clock_skew_s=30.0)
    origin, _ = lc.window(c.wall_now - 29.0, c.mono_now)
    assert origin == pytest.approx(c.mono_now - 29.0)  # a long backlog is still a backlog
    assert lc.window(c.wall_now - 31.0, c.mono_now) == (c.mono_now, c.mono_now + 0.1)
    assert lc.window(0.0, c.mono_now)[0] == c.mono_now  # an RTC reset to 1970
    assert lc.skewed == 2


def test_arrival_mode_and_missing_ts_ignore_the_sensor_clock() -> None:
    c = Clocks()
    lc = _clock(c, source="arrival")
    assert lc.window(c.wall_now - 5.0, c.mono_now) == (c.mono_now, c.mono_now + 0.1)
    sensor = _clock(c)
    assert sensor.window(None, c.mono_now) == (c.mono_now, c.mono_now + 0.1)
    assert lc.skewed == sensor.skewed == 0
    sensor.slo_s = 0.5  # a model swap changes the SLO for later windows
    assert sensor.window(None, c.mono_now)[1] == c.mono_now + 0.5


async def test_backlogged_readings_are_answered_and_flagged_late(
    mosquitto: Any, repo: Path, topic_prefix: str, make_agent: Any, subscriber: Any
) -> None:
    """Readings that sat in a backlog (old ts) are all answered, late, none dropped."""
    agent = await make_agent(
        agent_settings(
            mosquitto.url,
            repo,
            topic_prefix,
            policy="slo-aware",
            slo_ms=200.0,
            hop=10,
            max_clock_skew_s=600.0,
        )
    )
    results = subscriber(f"{topic_prefix}/results/#")
    rng = np.random.default_rng(8)
    pub = publisher(mosquitto.url)
    now = time.time()
    try:
        for seq in range(150):  # windows end at seq 99, 109, ..., 149: six per device
            row = rng.normal(size=6)
            pub.publish(
                f"{topic_prefix}/sensors/s/old/imu", reading(seq, row, now - 30 + seq / 10), 1
            )
            pub.publish(f"{topic_prefix}/sensors/s/new/imu", reading(seq, row), 1)
            pub.publish(f"{topic_prefix}/sensors/s/rtc/imu", reading(seq, row, 1000.0 + seq), 1)
        got = await asyncio.to_thread(results.wait_for, 18, 15)
    finally:
        pub.disconnect()
        pub.loop_stop()
    by: dict[str, list[dict[str, Any]]] = {}
    for r in got:
        by.setdefault(r["device"], []).append(r)
    assert {d: [r["seq"] for r in rs] for d, rs in by.items()} == {
        d: list(range(99, 150, 10)) for d in ("old", "new", "rtc")
    }
    for r in by["old"]:
        assert r["deadline_met"] is False
        assert r["reason"] == "shed:deadline-passed"  # the policy knew it was already late
        age_ms = (now - r["ts"]) * 1000.0  # ts of the window's last reading
        assert age_ms >= 15_000.0 and r["latency_ms"]["transit"] >= age_ms
        assert r["latency_ms"]["total"] >= r["latency_ms"]["transit"]
        assert r["output"]["label"] is not None
    for r in by["new"] + by["rtc"]:  # fresh, or a broken clock timed from arrival
        assert r["latency_ms"]["total"] < 15_000.0
    assert all(r["latency_ms"]["transit"] == 0.0 for r in by["rtc"])
    st = agent.status()
    assert st["streams"]["clock_skew"] == 6
    assert st["totals"]["results"] == 18
    assert agent.stats.deadline_met <= 12  # the six old windows count as missed
    assert st["slo_attainment"] == round(agent.stats.deadline_met / 18, 5)
    assert st["routes"]["shed"] >= 1


async def test_late_batches_offloaded_get_a_fresh_budget_from_the_cloud(
    mosquitto: Any, repo: Path, topic_prefix: str, make_agent: Any, subscriber: Any
) -> None:
    """A shed batch sent to a faster cloud must not carry its expired deadline along."""
    cloud = OffloadServer(repo)
    try:
        agent = await make_agent(
            agent_settings(
                mosquitto.url,
                repo,
                topic_prefix,
                policy="slo-aware",
                slo_ms=100.0,
                hop=100,
                cloud=cloud.target,
                emulate_ms_per_batch=300.0,  # a slow device: the cloud is the fast way
                inline_max_ms=0,
            )
        )

        def cloud_is_fast() -> bool:
            # A start-up probe that timed out while the fresh server warmed up leaves
            # censored RTT evidence for a few seconds: wait until the cloud looks fast.
            doc = agent.status()["cloud"]
            return bool(doc.get("measured")) and (doc.get("p95_ms") or 1e9) < 100.0

        end = time.monotonic() + 20
        while not cloud_is_fast() and time.monotonic() < end:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        assert cloud_is_fast(), agent.status()["cloud"]
        results = subscriber(f"{topic_prefix}/results/#")
        rng = np.random.default_rng(9)
        pub = publisher(mosquitto.url)
        old = time.time() - 20.0
        try:
            for seq in range(100):
                pub.publish(
                    f"{topic_prefix}/sensors/s/late/imu", reading(seq, rng.normal(size=6), old), 1
                )
            (r,) = await asyncio.to_thread(results.wait_for, 1, 15)
        finally:
            pub.disconnect()
            pub.loop_stop()
    finally:
        cloud.kill()
    assert r["reason"] == "shed:deadline-passed" and r["deadline_met"] is False
    assert r["route"] == "cloud"  # not "edge" with reason fallback:deadline-exceeded
    assert agent.stats.fallbacks == 0
