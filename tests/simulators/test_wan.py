"""WAN proxy against a real echo server: delay, bandwidth cap, outages, drops, counters."""

from __future__ import annotations

import asyncio
import shutil
import statistics
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from simulators.wan import WanEvent, WanProfile, WanProxy, netem_available


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


@pytest.fixture
async def echo_port() -> AsyncIterator[int]:
    server = await asyncio.start_server(_echo, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()


async def _rtts(port: int, n: int) -> list[float]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    out = []
    for _ in range(n):
        t = time.perf_counter()
        writer.write(b"ping")
        await reader.readexactly(4)
        out.append(time.perf_counter() - t)
    writer.close()
    return out


@pytest.mark.parametrize("delay_ms", [10.0, 40.0])
async def test_delay_matches_setting_within_10_percent(echo_port: int, delay_ms: float) -> None:
    async with WanProxy("127.0.0.1", echo_port, profile=WanProfile(delay_ms=delay_ms)) as proxy:
        rtts = await _rtts(proxy.port, 20)
    median = statistics.median(rtts) * 1000
    assert abs(median - 2 * delay_ms) <= 0.1 * 2 * delay_ms, (median, rtts)
    # Never early: every byte waits at least the configured delay each way.
    assert min(rtts) * 1000 >= 2 * delay_ms * 0.99, rtts


async def test_jitter_spreads_rtt_but_keeps_order(echo_port: int) -> None:
    profile = WanProfile(delay_ms=20.0, jitter_ms=5.0)
    async with WanProxy("127.0.0.1", echo_port, profile=profile) as proxy:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        for i in range(200):
            writer.write(b"%05d" % i)
            await asyncio.sleep(0.001)
        data = await reader.readexactly(1000)
        writer.close()
        rtts = await _rtts(proxy.port, 30)
    assert data == b"".join(b"%05d" % i for i in range(200))
    assert statistics.pstdev(rtts) > 0.002


async def test_bandwidth_cap_limits_throughput(echo_port: int) -> None:
    profile = WanProfile(bandwidth_kbps=8000)  # 1 MB/s each way
    async with WanProxy("127.0.0.1", echo_port, profile=profile) as proxy:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        payload = b"x" * 500_000
        t = time.perf_counter()
        writer.write(payload)
        await reader.readexactly(len(payload))
        elapsed = time.perf_counter() - t
        writer.close()
        assert proxy.bytes_up == len(payload) and proxy.bytes_down == len(payload)
    # 0.5 MB at 1 MB/s is 0.5 s; the two directions overlap, so not much more.
    assert 0.45 < elapsed < 0.8, elapsed


async def test_scheduled_outage_refuses_then_recovers(echo_port: int) -> None:
    events = [WanEvent(at_s=0.2, kind="outage", length_s=0.5)]
    async with WanProxy("127.0.0.1", echo_port, schedule=events) as proxy:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        writer.write(b"a")
        assert await reader.readexactly(1) == b"a"
        await asyncio.sleep(0.35)
        # The established connection was reset by the outage...
        with pytest.raises((ConnectionError, asyncio.IncompleteReadError)):
            writer.write(b"b")
            await writer.drain()
            await asyncio.wait_for(reader.readexactly(1), 1.0)
        # ...and new ones are closed at once while it lasts.
        r2, _w2 = await asyncio.open_connection("127.0.0.1", proxy.port)
        assert await r2.read(1) == b""
        await asyncio.sleep(0.5)
        assert len(await _rtts(proxy.port, 3)) == 3
        assert proxy.refused >= 1


async def test_blackhole_holds_bytes_until_link_returns(echo_port: int) -> None:
    async with WanProxy("127.0.0.1", echo_port) as proxy:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        proxy.outage(True, blackhole=True)
        writer.write(b"held")
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(reader.readexactly(4), 0.3)
        proxy.outage(False, blackhole=True)
        assert await asyncio.wait_for(reader.readexactly(4), 1.0) == b"held"
        writer.close()


async def test_profile_change_and_drop_from_schedule(echo_port: int) -> None:
    events = [
        WanEvent(at_s=0.3, kind="profile", profile=WanProfile(delay_ms=30)),
        WanEvent(at_s=0.3, kind="drop"),
    ]
    async with WanProxy("127.0.0.1", echo_port, schedule=events) as proxy:
        before = statistics.median(await _rtts(proxy.port, 5))
        await asyncio.sleep(0.4)
        after = statistics.median(await _rtts(proxy.port, 5))
    assert before < 0.01 and 0.054 < after < 0.066


def test_netem_detection_reports_a_reason() -> None:
    ok, why = netem_available()
    assert isinstance(ok, bool) and why
    if not Path("/sys/module/sch_netem").exists() and not shutil.which("tc"):
        assert not ok
