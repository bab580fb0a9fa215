"""The local queue wait the router sees: what is left of the running batches, not max_batch."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from edge_agent.model.slot import ModelSlot
from edge_agent.routing.batch import BatchDone, Request
from edge_agent.routing.dispatcher import Dispatcher
from edge_agent.routing.estimates import ServiceTimeModel
from edge_agent.routing.policy import make_policy
from models.backends.base import BackendOptions

Factory = Callable[..., Awaitable[Dispatcher]]
HOLD_S = 0.4  # the emulated device holds its worker this long per batch


async def _dispatcher(repo: Path, workers: int) -> tuple[Dispatcher, list[BatchDone]]:
    """A real dispatcher on a real (emulated slow) motion-edge backend."""
    executor = ThreadPoolExecutor(workers)
    models = ModelSlot(
        repo,
        executor,
        options=BackendOptions(emulate_ms_per_batch=HOLD_S * 1000),
        warmup_batches=(1,),
    )
    await models.load("motion-edge", None)
    got: list[BatchDone] = []
    service = ServiceTimeModel()
    # A known history: batches of 1 are cheap, 8 costs 0.3 s, max_batch (64) 2 s.
    for n, s in ((1, 0.01), (8, 0.3), (64, 2.0)):
        service.observe(n, s)
    d = Dispatcher(
        models,
        executor,
        got.append,
        max_batch=64,
        max_wait_s=0.005,
        workers=workers,
        policy=make_policy("local-only"),
        service=service,
    )
    return d, got


@pytest.fixture
async def make() -> AsyncIterator[Factory]:
    made: list[Dispatcher] = []

    async def factory(repo: Path, workers: int = 1) -> Dispatcher:
        d, _ = await _dispatcher(repo, workers)
        made.append(d)
        return d

    yield factory
    for d in made:
        await d.drain(5.0)
        d._executor.shutdown(wait=True)


def _submit(d: Dispatcher, n: int) -> BatchDone:
    now = time.monotonic()
    rng = np.random.default_rng(n)
    reqs = [
        Request(None, rng.normal(size=(100, 6)).astype(np.float32), i, 0.0, now, now + 5.0)
        for i in range(n)
    ]
    done = BatchDone(reqs, d.models.lease(), "edge", "local", now)
    d.run_local(done)
    return done


async def _until_started(d: Dispatcher, count: int) -> None:
    end = time.monotonic() + 2.0
    while time.monotonic() < end:
        if d.local_work.started() >= count:
            return
        await asyncio.sleep(0.002)
    raise AssertionError("batch never started on a worker")


def _queue_s(d: Dispatcher) -> float:
    now = time.monotonic()
    return d._observe(now, 1, now + 1.0).local_queue_s


async def test_idle_device_has_no_wait(repo: Path, make: Factory) -> None:
    d = await make(repo)
    assert _queue_s(d) == 0.0


async def test_free_worker_means_no_wait(repo: Path, make: Factory) -> None:
    d = await make(repo, workers=2)
    _submit(d, 8)
    await _until_started(d, 1)
    assert d.local_busy == 1
    assert _queue_s(d) == 0.0  # the old estimate said 1/2 * estimate(64) = 1 s


async def test_small_batch_past_its_estimate_frees_soon(repo: Path, make: Factory) -> None:
    d = await make(repo)
    _submit(d, 1)
    await _until_started(d, 1)
    await asyncio.sleep(0.05)  # beyond estimate(1) = 10 ms; the device still holds it
    assert d.local_busy == 1
    assert _queue_s(d) == 0.0  # the old estimate said estimate(64) = 2 s


async def test_fresh_big_batch_waits_its_estimate(repo: Path, make: Factory) -> None:
    d = await make(repo)
    _submit(d, 8)
    await _until_started(d, 1)
    wait = _queue_s(d)
    assert 0.3 - 0.1 < wait <= 0.3  # what is left of estimate(8), not estimate(64)
    await asyncio.sleep(0.1)
    later = _queue_s(d)
    assert wait - 0.15 < later <= wait - 0.09  # the wait shrinks as the batch runs


async def test_queued_batch_adds_to_the_wait(repo: Path, make: Factory) -> None:
    """A hedge twin queued behind a running batch takes the worker first."""
    d = await make(repo)
    _submit(d, 1)
    await _until_started(d, 1)
    await asyncio.sleep(0.05)
    _submit(d, 8)  # waits in the executor: its compute has not started
    assert d.local_busy == 2
    assert 0.3 - 0.05 < _queue_s(d) <= 0.3  # ~0 left of the first + estimate(8)


async def test_wait_clears_once_batches_finish(repo: Path, make: Factory) -> None:
    d = await make(repo)
    done = _submit(d, 8)
    await d.drain(3.0)
    assert d.local_busy == 0 and done.error is None and done.outputs is not None
    assert len(d.local_work) == 0 and _queue_s(d) == 0.0
