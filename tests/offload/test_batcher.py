"""The dynamic batcher: batching, splitting, errors to every waiter, deadlines, bounds."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from models.errors import BackendError, DeadlineExceeded, InvalidInput, Overloaded
from offload.batcher import BatchConfig, BatchObserver, DynamicBatcher


@pytest.fixture
def executor() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(2) as pool:
        yield pool


class Recorder(BatchObserver):
    def __init__(self) -> None:
        self.sizes: list[int] = []
        self.expired_count = 0

    def batch(
        self, rows: int, requests: int, input_s: float, infer_s: float, output_s: float
    ) -> None:
        self.sizes.append(rows)

    def expired(self) -> None:
        self.expired_count += 1


def double(inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    time.sleep(0.005)  # long enough for requests to pile up behind a running batch
    return {"y": inputs["x"] * 2}


async def test_concurrent_requests_batch_and_get_their_own_rows(
    executor: ThreadPoolExecutor,
) -> None:
    rec = Recorder()
    batcher = DynamicBatcher(
        double, BatchConfig(max_batch_size=16, instances=1), executor, observer=rec
    )
    batcher.start()
    xs = [np.full((1 + i % 3, 2), i, np.float32) for i in range(40)]
    outs = await asyncio.gather(*(batcher.submit({"x": x}, x.shape[0]) for x in xs))
    await batcher.close()
    for x, out in zip(xs, outs, strict=True):
        np.testing.assert_array_equal(out["y"], x * 2)
    assert sum(rec.sizes) == sum(x.shape[0] for x in xs)
    assert max(rec.sizes) <= 16 and len(rec.sizes) < 40


async def test_queue_delay_waits_for_a_fuller_batch(executor: ThreadPoolExecutor) -> None:
    rec = Recorder()
    config = BatchConfig(max_batch_size=8, max_queue_delay_s=0.5, instances=1)
    batcher = DynamicBatcher(double, config, executor, observer=rec)
    batcher.start()

    async def late(i: int) -> dict[str, np.ndarray]:
        await asyncio.sleep(0.001 * i)
        return await batcher.submit({"x": np.ones((1, 2), np.float32)}, 1)

    started = time.monotonic()
    await asyncio.gather(*(late(i) for i in range(8)))
    await batcher.close()
    assert rec.sizes == [8]  # 8 rows arrived within the delay: one full batch
    assert time.monotonic() - started < 0.4  # ...dispatched when full, not at the delay's end


async def test_preferred_sizes_shape_batches(executor: ThreadPoolExecutor) -> None:
    rec = Recorder()
    gate = threading.Event()

    def gated(inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        gate.wait(5)
        return {"y": inputs["x"]}

    config = BatchConfig(max_batch_size=16, preferred_sizes=(4,), instances=1)
    batcher = DynamicBatcher(gated, config, executor, observer=rec)
    batcher.start()
    tasks = [
        asyncio.create_task(batcher.submit({"x": np.ones((1, 2), np.float32)}, 1)) for _ in range(9)
    ]
    await asyncio.sleep(0.05)  # the first request runs alone (gated); eight queue behind it
    gate.set()
    await asyncio.gather(*tasks)
    await batcher.close()
    assert rec.sizes == [1, 4, 4]  # then preferred size 4, twice


async def test_failure_reaches_every_waiter(executor: ThreadPoolExecutor) -> None:
    def broken(inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise RuntimeError("engine on fire")

    batcher = DynamicBatcher(broken, BatchConfig(max_batch_size=8), executor, label="m:1")
    batcher.start()
    results = await asyncio.gather(
        *(batcher.submit({"x": np.ones((1, 2), np.float32)}, 1) for _ in range(5)),
        return_exceptions=True,
    )
    await batcher.close()
    assert all(isinstance(r, BackendError) and "engine on fire" in str(r) for r in results)


async def test_output_rows_are_checked_against_input_rows(executor: ThreadPoolExecutor) -> None:
    def drops_a_row(inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {"y": inputs["x"][1:]}

    batcher = DynamicBatcher(drops_a_row, BatchConfig(max_batch_size=8), executor, label="m:1")
    batcher.start()
    with pytest.raises(BackendError, match="returned 2 rows of 'y' for 3 input rows"):
        await batcher.submit({"x": np.ones((3, 2), np.float32)}, 3)
    await batcher.close()


async def test_bounds_and_deadlines(executor: ThreadPoolExecutor) -> None:
    gate = threading.Event()

    def gated(inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        gate.wait(5)
        return {"y": inputs["x"]}

    rec = Recorder()
    config = BatchConfig(max_batch_size=4, max_queue=2, instances=1)
    batcher = DynamicBatcher(gated, config, executor, label="m:1", observer=rec)
    batcher.start()
    one = {"x": np.ones((1, 2), np.float32)}
    with pytest.raises(InvalidInput, match="exceeds max_batch_size 4"):
        await batcher.submit({"x": np.ones((5, 2), np.float32)}, 5)
    running = asyncio.create_task(batcher.submit(one, 1))
    await asyncio.sleep(0.02)
    expiring = asyncio.create_task(batcher.submit(one, 1, deadline=time.monotonic() + 0.01))
    waiting = asyncio.create_task(batcher.submit(one, 1))
    await asyncio.sleep(0.02)
    with pytest.raises(Overloaded, match="queue of m:1 is full"):
        await batcher.submit(one, 1)
    gate.set()
    await running
    await waiting
    with pytest.raises(DeadlineExceeded):
        await expiring
    await batcher.close()
    assert rec.expired_count == 1 and rec.sizes == [1, 1]
