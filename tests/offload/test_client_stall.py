"""OffloadClient against a real offload-server that stalls (SIGSTOP): censored RTTs, fair
deadlines for the breaker, recovery once it resumes."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import pytest

from models.errors import DeadlineExceeded, Unavailable
from offload.breaker import BreakerConfig
from offload.client import OffloadClient
from tests.offload.conftest import ServerProcess
from tests.offload.test_client import x_rows


async def test_stalled_remote_looks_slow_and_only_fair_misses_open_the_breaker(
    repository: Path,
) -> None:
    proc = ServerProcess(repository, "--log-level", "WARNING")
    config = BreakerConfig(failure_threshold=3, open_s=0.3)
    try:
        async with OffloadClient(proc.target, breaker=config) as client:
            for i in range(8):
                await client.infer("affine", 1, {"x": x_rows(1, i)}, time.monotonic() + 5.0)
            healthy_p95 = client.stats.rtt_p95_s
            assert 0 < healthy_p95 < 0.05

            # The remote stalls (process stopped, connection still up).
            os.kill(proc.proc.pid, signal.SIGSTOP)
            try:
                # Requests that arrive with less budget than the remote's measured p95 would
                # miss against a healthy remote too: the caller's problem, so the breaker
                # stays closed however many there are.
                doomed = healthy_p95 / 2
                for _ in range(5):
                    with pytest.raises(DeadlineExceeded):
                        await client.infer("affine", 1, {"x": x_rows(1)}, time.monotonic() + doomed)
                stats = client.stats
                assert stats.breaker_state == "closed" and client.available
                assert stats.failures == 5 and stats.excused == 5

                # Misses with a fair budget are charged, and the estimates the policy reads
                # rise past the budget.
                budget = 0.1
                for _ in range(3):
                    started = time.monotonic()
                    with pytest.raises(DeadlineExceeded):
                        await client.infer("affine", 1, {"x": x_rows(1)}, started + budget)
                    assert time.monotonic() - started < budget + 0.1
                stats = client.stats
                assert stats.breaker_state == "open" and not client.available
                assert stats.failures == 8 and stats.excused == 5 and stats.calls == 16
                assert stats.rtt_p95_s > budget
                with pytest.raises(Unavailable, match="circuit"):
                    await client.infer("affine", 1, {"x": x_rows(1)}, time.monotonic() + budget)
            finally:
                os.kill(proc.proc.pid, signal.SIGCONT)

            await asyncio.sleep(config.open_s)
            assert client.stats.breaker_state == "half-open"
            await client.infer("affine", 1, {"x": x_rows(1)}, time.monotonic() + 5.0)
            assert client.stats.breaker_state == "closed"
    finally:
        proc.terminate()


async def test_cancelled_probe_frees_the_half_open_slot(repository: Path) -> None:
    proc = ServerProcess(repository, "--log-level", "WARNING")
    config = BreakerConfig(failure_threshold=1, open_s=0.0)
    try:
        async with OffloadClient(proc.target, breaker=config) as client:
            await client.infer("affine", 1, {"x": x_rows(1)}, time.monotonic() + 5.0)
            client.breaker.record_failure()  # open; open_s=0 reads as half-open at once
            assert client.stats.breaker_state == "half-open"
            # A hedge that lost the race is cancelled mid-call while holding the only probe.
            task = asyncio.create_task(
                client.infer("slow", None, {"x": x_rows(1)}, time.monotonic() + 5.0)
            )
            await asyncio.sleep(0.005)
            assert not client.available  # the probe slot is taken
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert client.available
            await client.infer("affine", 1, {"x": x_rows(1)}, time.monotonic() + 5.0)
            assert client.stats.breaker_state == "closed"
    finally:
        proc.terminate()
