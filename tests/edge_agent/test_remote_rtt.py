"""An unmeasured cloud is not instant: the RTT prior, the blend, and startup probes."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge_agent.routing.policy import Route, make_policy
from edge_agent.routing.rtt import RemoteRtt
from offload.client import OffloadClient
from offload.stats import RemoteStats
from tests.conftest import free_port
from tests.edge_agent.conftest import OffloadServer, agent_settings


def _stats(rtt: float, p95: float, calls: int) -> RemoteStats:
    return RemoteStats(rtt, p95, 0.0, "closed", calls, 0)


def test_prior_until_measured_then_blend_then_measurement() -> None:
    est = RemoteRtt(prior_s=0.08, min_samples=4)
    # What the client reports before any success: zeros (and calls may already count).
    assert est.estimate(_stats(0.0, 0.0, 0)) == (0.08, 0.08)
    assert est.estimate(_stats(0.0, 0.0, 5)) == (0.08, 0.08)  # attempts that all failed
    assert est.estimate(None) == (0.08, 0.08)
    est.observed()
    rtt, p95 = est.estimate(_stats(0.004, 0.006, 1))
    assert rtt == pytest.approx(0.75 * 0.08 + 0.25 * 0.004)
    assert p95 == pytest.approx(0.75 * 0.08 + 0.25 * 0.006)
    for _ in range(3):
        est.observed()
    assert est.measured
    assert est.estimate(_stats(0.004, 0.006, 4)) == (0.004, 0.006)
    # A p95 below the mean (tiny sample window) never makes the tail look better than it is.
    assert est.estimate(_stats(0.004, 0.001, 4)) == (0.004, 0.004)


def test_zero_min_samples_trusts_the_first_measurement() -> None:
    est = RemoteRtt(prior_s=0.05, min_samples=0)
    assert est.measured and est.estimate(_stats(0.0, 0.0, 0)) == (0.05, 0.05)
    est.observed()
    assert est.estimate(_stats(0.01, 0.02, 1)) == (0.01, 0.02)


async def test_probe_against_dead_cloud_keeps_the_prior() -> None:
    est = RemoteRtt(prior_s=0.05, min_samples=2)
    client = OffloadClient(f"127.0.0.1:{free_port()}", max_retries=0)
    await client.start()
    try:

        async def call(deadline: float) -> object:
            x = np.zeros((1, 100, 6), dtype=np.float32)
            return await client.infer("motion-cloud", None, {"input": x}, deadline)

        task = asyncio.create_task(est.probe(call, lambda: client.available, interval_s=0.05))
        await asyncio.sleep(0.5)
        assert not task.done()  # still trying, never gave up, never raised
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    finally:
        await client.close()
    assert est.samples == 0 and client.stats.calls > 0
    assert est.estimate(client.stats) == (0.05, 0.05)


async def test_probes_go_on_only_while_no_call_succeeds() -> None:
    # A stale (bad-moment) measurement must be refreshed when nothing else measures it,
    # and real traffic must make the refresh probes unnecessary.
    est = RemoteRtt(prior_s=0.05, min_samples=1)
    probes: list[float] = []

    async def call(deadline: float) -> object:
        probes.append(time.monotonic())
        return None

    task = asyncio.create_task(est.probe(call, lambda: True, refresh_s=0.1))
    try:
        await asyncio.sleep(0.45)
        assert est.measured and 4 <= len(probes) <= 6, probes  # startup + ~1 per 0.1 s
        n = len(probes)
        for _ in range(20):  # batches succeed every 20 ms: no probe needed
            est.observed()
            await asyncio.sleep(0.02)
        assert len(probes) == n
        await asyncio.sleep(0.25)
        assert len(probes) >= n + 1  # idle again: probing resumes
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    finished = RemoteRtt(prior_s=0.05, min_samples=1)
    await asyncio.wait_for(finished.probe(call, lambda: True, refresh_s=0.0), 1.0)  # returns


async def test_agent_uses_prior_at_startup_and_probes_the_real_cloud(
    mosquitto: Any, repo: Path, topic_prefix: str, make_agent: Any
) -> None:
    # Before: an agent whose cloud is unreachable must not see it as instant.
    dead = await make_agent(
        agent_settings(
            mosquitto.url,
            repo,
            f"{topic_prefix}d",
            policy="slo-aware",
            cloud=f"127.0.0.1:{free_port()}",
            cloud_rtt_prior_ms=200,
        )
    )
    now = time.monotonic()
    obs = dead.dispatcher._observe(now, 8, now + 0.1)
    assert (obs.remote_rtt_s, obs.remote_p95_s) == (0.2, 0.2)
    doc = dead.status()["cloud"]
    assert doc["configured"] is True and doc["rtt_prior_ms"] == 200
    assert (doc["rtt_ms"], doc["p95_ms"], doc["samples"]) == (200.0, 200.0, 0)
    assert doc["measured"] is False and doc["rtt_measured_ms"] is None
    assert doc["breaker"] in ("closed", "open", "half-open")
    assert set(dead.heartbeat()["cloud"]) == set(doc)  # the same section in both
    # Local is late: the old 0.0 made an unmeasured cloud "fit" and won the batch.
    late = dataclasses.replace(obs, local_service_s=1.0, remote_available=True)
    policy = make_policy("slo-aware")
    assert policy.decide(dataclasses.replace(late, remote_rtt_s=0.0, remote_p95_s=0.0)).route in (
        Route.REMOTE,
        Route.HEDGE,
    )
    assert policy.decide(late).route == Route.SHED

    # A real offload-server: startup probes replace the prior with the measured RTT.
    cloud = OffloadServer(repo)
    try:
        agent = await make_agent(
            agent_settings(
                mosquitto.url,
                repo,
                topic_prefix,
                policy="slo-aware",
                cloud=cloud.target,
                cloud_model="motion-cloud",
                cloud_rtt_prior_ms=200,
                cloud_rtt_min_samples=3,
                cloud_rtt_refresh_s=0,  # exactly the startup probes here (refresh: below)
            )
        )
        end = time.monotonic() + 15
        while not agent.dispatcher.rtt.measured and time.monotonic() < end:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        stats = agent.remote.stats
        assert agent.dispatcher.rtt.samples == 3 and stats.calls == 3
        now = time.monotonic()
        obs = agent.dispatcher._observe(now, 8, now + 0.1)
        assert obs.remote_rtt_s == stats.rtt_ewma_s
        assert 0.0 < obs.remote_rtt_s < 0.2  # a loopback round trip, not the prior
        cloud_st = agent.status()["cloud"]
        assert cloud_st["target"] == cloud.target and cloud_st["model"] == "motion-cloud"
        assert cloud_st["measured"] is True and cloud_st["samples"] == 3
        assert cloud_st["calls"] == 3 and cloud_st["failures"] == 0
        assert cloud_st["breaker"] == "closed" and cloud_st["available"] is True
        assert cloud_st["rtt_ms"] == cloud_st["rtt_measured_ms"] == round(stats.rtt_ewma_s * 1e3, 3)
        assert 0.0 < cloud_st["rtt_ms"] < 200.0
        assert agent.heartbeat()["health"]["cloud"] == "closed"
        assert agent.heartbeat()["cloud"]["rtt_measured_ms"] == cloud_st["rtt_measured_ms"]
    finally:
        cloud.kill()
