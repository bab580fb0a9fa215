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
from offload.batcher import BatchConfig, BatchObserver, DynamicBatcher, ServiceTime


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


def test_service_time_prediction_scales_with_rows() -> None:
    service = ServiceTime()
    assert service.predict(1) is None  # nothing measured: never inline a first batch
    for _ in range(20):
        service.observe(50e-6, 1)  # 50 us for one row
    one = service.predict(1)
    assert one is not None and one == pytest.approx(50e-6, rel=0.01)
    many = service.predict(64)
    assert many is not None and many == pytest.approx(64 * 50e-6, rel=0.01)


async def test_tiny_batches_run_inline_when_idle(executor: ThreadPoolExecutor) -> None:
    loop_thread = threading.get_ident()
    ran_on: list[bool] = []

    def quick(inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        ran_on.append(threading.get_ident() == loop_thread)
        return {"y": inputs["x"] + 1}

    config = BatchConfig(max_batch_size=8, instances=2, inline_max_s=0.05)
    batcher = DynamicBatcher(quick, config, executor)
    batcher.start()
    for i in range(5):  # one at a time: nothing else in flight
        out = await batcher.submit({"x": np.full((1, 2), i, np.float32)}, 1)
        np.testing.assert_array_equal(out["y"], np.full((1, 2), i + 1, np.float32))
    await batcher.close()
    assert ran_on[0] is False  # the first batch is measured in the executor
    assert all(ran_on[1:]) and batcher.inline_batches == 4


async def test_slow_or_busy_batches_stay_in_the_executor(executor: ThreadPoolExecutor) -> None:
    loop_thread = threading.get_ident()
    inline: list[bool] = []

    def slow(inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        inline.append(threading.get_ident() == loop_thread)
        time.sleep(0.002)  # 2 ms per batch: above the 1 ms inline limit
        return {"y": inputs["x"]}

    config = BatchConfig(max_batch_size=8, instances=2, inline_max_s=0.001)
    batcher = DynamicBatcher(slow, config, executor)
    batcher.start()
    for _ in range(3):
        await batcher.submit({"x": np.ones((1, 2), np.float32)}, 1)
    await asyncio.gather(*(batcher.submit({"x": np.ones((1, 2), np.float32)}, 1) for _ in range(6)))
    await batcher.close()
    assert not any(inline) and batcher.inline_batches == 0


async def test_inline_errors_reach_only_their_callers(executor: ThreadPoolExecutor) -> None:
    def picky(inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if float(inputs["x"][0, 0]) < 0:
            raise BackendError("negative input")
        return {"y": inputs["x"]}

    config = BatchConfig(max_batch_size=1, instances=1, inline_max_s=0.05)
    batcher = DynamicBatcher(picky, config, executor)
    batcher.start()
    await batcher.submit({"x": np.ones((1, 2), np.float32)}, 1)  # measured, then inline
    with pytest.raises(BackendError, match="negative input"):
        await batcher.submit({"x": -np.ones((1, 2), np.float32)}, 1)
    out = await batcher.submit({"x": np.ones((1, 2), np.float32)}, 1)
    await batcher.close()
    np.testing.assert_array_equal(out["y"], np.ones((1, 2), np.float32))
    assert batcher.inline_batches >= 1
