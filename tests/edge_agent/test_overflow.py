"""Overflow: a queue longer than the device can serve in time sends its tail to the cloud."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from edge_agent.model.slot import ModelSlot
from edge_agent.routing.batch import BatchDone, Request
from edge_agent.routing.dispatcher import Dispatcher
from edge_agent.routing.estimates import ServiceTimeModel
from edge_agent.routing.policy import make_policy
from edge_agent.routing.rtt import RemoteRtt
from models.backends.base import BackendOptions
from offload.client import OffloadClient
from tests.edge_agent.conftest import OffloadServer

ITEM_S = 0.02  # the emulated device: 20 ms per window, batches of 2 -> 50 windows/s
SLO_S = 0.25


async def _dispatcher(repo: Path, policy: str, client: OffloadClient) -> tuple[Dispatcher, list]:
    executor = ThreadPoolExecutor(1)
    models = ModelSlot(
        repo,
        executor,
        options=BackendOptions(emulate_ms_per_item=ITEM_S * 1000),
        warmup_batches=(1, 2),
    )
    await models.load("motion-edge", None)
    service = ServiceTimeModel()
    for n in (1, 2):
        service.observe(n, n * ITEM_S)
    got: list[BatchDone] = []
    d = Dispatcher(
        models,
        executor,
        got.append,
        max_batch=2,
        max_wait_s=0.001,
        workers=1,
        policy=make_policy(policy),
        service=service,
        remote=client,
        remote_model=lambda: ("motion-cloud", None),
        remote_rtt=RemoteRtt(prior_s=0.01, min_samples=0),
    )
    return d, got


def _requests(n: int) -> list[Request]:
    now = time.monotonic()
    rng = np.random.default_rng(n)
    window = rng.normal(size=(100, 6)).astype(np.float32)
    return [Request(None, window, i, time.time(), now, now + SLO_S) for i in range(n)]


async def _run(repo: Path, policy: str, client: OffloadClient, n: int) -> list[BatchDone]:
    d, got = await _dispatcher(repo, policy, client)
    try:
        d.add(_requests(n))
        await d.drain(10.0)
    finally:
        d._executor.shutdown(wait=True)
    return got


async def test_tail_goes_to_the_cloud_head_stays_local(repo: Path) -> None:
    cloud = OffloadServer(repo)
    client = OffloadClient(cloud.target)
    await client.start()
    try:
        # 60 windows at once: the device serves ~12 within the SLO, the rest overflow.
        done = await _run(repo, "slo-aware", client, 60)
        local_only = await _run(repo, "local-only", client, 60)
    finally:
        await client.close()
        cloud.kill()
    seqs = sorted(r.seq for b in done for r in b.requests)
    assert seqs == list(range(60))  # every request exactly once
    cloud_seqs = [r.seq for b in done if b.route == "cloud" for r in b.requests]
    overflow = [r.seq for b in done if b.reason.startswith("overflow:") for r in b.requests]
    reasons = [(b.route, b.reason) for b in done]
    # The head batch may go to the cloud on its own merits too, once the device is busy.
    assert all(
        b.reason.startswith("overflow:") or "remote-fits" in b.reason
        for b in done
        if b.route == "cloud"
    ), reasons
    assert len(overflow) >= 30 and set(overflow) <= set(cloud_seqs), reasons
    local_seqs = [r.seq for b in done if b.route == "edge" for r in b.requests]
    assert min(local_seqs) == 0 and np.median(local_seqs) < np.median(cloud_seqs)  # head local
    assert all(b.error is None for b in done)
    # The same queue without a cloud policy: all local, and most of it late.
    assert {b.route for b in local_only} == {"edge"}
    assert sorted(r.seq for b in local_only for r in b.requests) == list(range(60))


async def test_a_queue_the_device_can_serve_in_time_stays_local(repo: Path) -> None:
    client = OffloadClient("127.0.0.1:9")  # never called: the check stops before the policy
    d, _ = await _dispatcher(repo, "slo-aware", client)
    try:
        reqs = _requests(6)  # 3 batches of 40 ms: well inside 250 ms
        d.queue.push_many(reqs)  # queued without a kick
        assert d._overflow(time.monotonic()) == 0
        assert len(d.queue) == 6 and d.remote_busy == 0
    finally:
        d.queue.pop_head(len(d.queue))
        d._executor.shutdown(wait=True)
        await asyncio.sleep(0)
