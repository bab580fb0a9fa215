"""models.versions: load before unload, leases outlive a swap, failed loads touch nothing,
one change at a time per model, rollback. Every version is a real ONNX Runtime backend
(the built motion-edge model under a version label); only the build's timing is steered."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from models import serving
from models.backends.base import BackendOptions
from models.errors import BackendError, EdgecloudError, NotFound, Unavailable
from models.recipes import BuildResult
from models.repository import ModelRepository
from models.serving import Served
from models.versions import Keep, Versions


@dataclass
class Item:
    """One loaded version as a caller of the registry holds it."""

    version: int
    served: Served

    def infer(self) -> None:
        backend = self.served.backend
        backend.infer(serving.zero_feed(backend.inputs, 1))


@dataclass
class Loader:
    """A build function over the real model file that records what happened, in order."""

    path: Path
    events: list[str] = field(default_factory=list)
    failing: set[int] = field(default_factory=set)
    gates: dict[int, threading.Event] = field(default_factory=dict)
    pause_s: float = 0.0
    barrier: threading.Barrier | None = None
    entered: threading.Event = field(default_factory=threading.Event)  # a build began
    retired: threading.Event = field(default_factory=threading.Event)  # a version retired
    in_flight: int = 0
    most_in_flight: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def build(self, name: str, version: int | None) -> Item:
        assert version is not None
        with self._lock:
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
            self.events.append(f"build {name}:{version}")
        self.entered.set()
        try:
            gate = self.gates.get(version)
            if gate is not None:
                assert gate.wait(10), "the test never opened the gate"
            if self.barrier is not None:
                self.barrier.wait()  # BrokenBarrierError if the other build never runs
            time.sleep(self.pause_s)
            if version in self.failing:
                raise RuntimeError("engine refused the graph")
            served = serving.load(self.path, "onnxruntime", BackendOptions())
        finally:
            with self._lock:
                self.in_flight -= 1
        self.events.append(f"built {name}:{version}")
        return Item(version, served)

    def retire(self, item: Item) -> None:
        self.events.append(f"retire {item.version}")
        item.served.retire()
        self.retired.set()


@pytest.fixture
def executor() -> Iterator[ThreadPoolExecutor]:
    pool = ThreadPoolExecutor(4)
    yield pool
    pool.shutdown(wait=True)


@pytest.fixture
def loader(built: BuildResult) -> Loader:
    return Loader(ModelRepository(built.repository, check=False).model_path("motion-edge"))


def registry(
    loader: Loader,
    executor: ThreadPoolExecutor,
    keep: Keep,
    *,
    start: Callable[[Item], None] | None = None,
    error: type[EdgecloudError] = BackendError,
) -> Versions[Item]:
    return Versions(
        loader.build, executor, keep=keep, retire=loader.retire, start=start, error=error
    )


async def test_the_new_version_is_built_before_the_old_one_is_retired(
    loader: Loader, executor: ThreadPoolExecutor
) -> None:
    versions = registry(loader, executor, "active")
    v1 = await versions.load("m", 1)
    gate = loader.gates[2] = threading.Event()
    loader.entered.clear()
    swap = asyncio.create_task(versions.load("m", 2, event="swapped"))
    assert await asyncio.to_thread(loader.entered.wait, 10)
    # The build runs in the executor: the loop is free and v1 still serves, untouched.
    await asyncio.sleep(0.05)
    assert versions.active("m") is v1 and not v1.served.closing
    v1.infer()
    gate.set()
    v2 = await swap
    assert versions.active("m") is v2 and versions.versions("m") == [2]
    assert v1.served.closing and not v2.served.closing
    assert loader.events == ["build m:1", "built m:1", "build m:2", "built m:2", "retire 1"]
    assert [h["event"] for h in versions.history] == ["loaded", "swapped"]


async def test_a_lease_keeps_the_replaced_version_alive_until_released(
    loader: Loader, executor: ThreadPoolExecutor
) -> None:
    versions = registry(loader, executor, "active")
    v1 = await versions.load("m", 1)
    v1.served.acquire()  # a batch is running on v1
    await versions.load("m", 2)
    assert versions.active("m") is not v1 and v1.served.closing
    v1.infer()  # the running batch finishes on the old backend
    v1.served.release()  # its last lease: now the backend is closed
    with pytest.raises(Exception):  # noqa: B017 - the engine's own error once closed
        v1.infer()


async def test_a_failed_load_leaves_the_active_version_serving(
    loader: Loader, executor: ThreadPoolExecutor
) -> None:
    versions = registry(loader, executor, "active")
    v1 = await versions.load("m", 1)
    loader.failing.add(2)
    with pytest.raises(BackendError, match="cannot load m:2: engine refused the graph"):
        await versions.load("m", 2)
    assert versions.active("m") is v1 and versions.versions("m") == [1]
    assert not v1.served.closing
    v1.infer()
    assert versions.failure("m", 2) == "cannot load m:2: engine refused the graph"
    assert versions.history[-1]["event"] == "failed" and versions.history[-1]["version"] == 2
    assert "retire 1" not in loader.events
    # Once it loads, the failure is forgotten.
    loader.failing.clear()
    await versions.load("m", 2)
    assert versions.failure("m", 2) is None and "retire 1" in loader.events


async def test_a_version_failing_to_start_is_unwound(
    loader: Loader, executor: ThreadPoolExecutor
) -> None:
    def start(item: Item) -> None:
        if item.version == 2:
            raise Unavailable("batcher would not start")

    versions = registry(loader, executor, "all", start=start, error=Unavailable)
    v1 = await versions.load("m", 1)
    with pytest.raises(Unavailable, match="would not start"):
        await versions.load("m", 2)
    assert versions.versions("m") == [1] and versions.active("m") is v1
    assert loader.events[-1] == "retire 2"  # built, never visible, retired again
    assert versions.failure("m", 2) == "batcher would not start"
    # Third-party errors become the registry's error class (the cloud tier's Unavailable).
    loader.failing.add(3)
    with pytest.raises(Unavailable, match="cannot load m:3"):
        await versions.load("m", 3)


async def test_loads_of_one_model_are_serialised_and_of_two_models_are_not(
    loader: Loader, executor: ThreadPoolExecutor
) -> None:
    versions = registry(loader, executor, "active")
    loader.pause_s = 0.2
    await asyncio.gather(versions.load("m", 1), versions.load("m", 2), versions.load("m", 3))
    assert loader.most_in_flight == 1
    assert len(versions.versions("m")) == 1 and len(versions.loaded()) == 1
    assert loader.events.count("retire 1") + loader.events.count("retire 2") == 2
    # Two different models: both builds must be running at once to pass the barrier.
    loader.pause_s = 0.0
    loader.barrier = threading.Barrier(2, timeout=10)
    await asyncio.gather(versions.load("a", 1), versions.load("b", 1))
    assert versions.names() == ["a", "b", "m"]


async def test_rollback_with_one_active_version_loads_the_previous_one_again(
    loader: Loader, executor: ThreadPoolExecutor
) -> None:
    versions = registry(loader, executor, "active")
    with pytest.raises(NotFound):
        await versions.rollback("m")
    await versions.load("m", 1)
    v2 = await versions.load("m", 2)
    assert versions.previous("m") == 1
    back = await versions.rollback("m")
    assert back.version == 1 and versions.active("m") is back and v2.served.closing
    assert loader.events[-3:] == ["build m:1", "built m:1", "retire 2"]
    assert versions.history[-1]["event"] == "rolled back"
    assert versions.previous("m") is None  # nothing served before v1
    with pytest.raises(NotFound, match="no earlier version"):
        await versions.rollback("m")


async def test_all_versions_stay_ready_the_newest_serves_and_rollback_unloads_newer(
    loader: Loader, executor: ThreadPoolExecutor
) -> None:
    versions = registry(loader, executor, "all")
    for v in (2, 1, 3):
        await versions.load("m", v)
    assert versions.versions("m") == [1, 2, 3]
    v3 = versions.active("m")
    assert v3 is not None and v3.version == 3 and versions.get("m", 1) is not None
    assert versions.previous("m") == 2
    back = await versions.rollback("m")
    assert back.version == 2 and versions.versions("m") == [1, 2] and v3.served.closing
    assert versions.previous("m") is None  # v2 was the first to serve
    # Unloading hides first: the newest remaining version serves at once.
    assert await versions.unload("m", 2) == [2]
    active = versions.active("m")
    assert active is not None and active.version == 1 and versions.get("m", 2) is None
    with pytest.raises(NotFound):
        await versions.unload("m", 2)
    await versions.close()
    assert versions.loaded() == [] and versions.active("m") is None
    assert all(loader.events.count(f"retire {v}") == 1 for v in (1, 2, 3))


async def test_concurrent_requests_for_one_missing_version_build_it_once(
    loader: Loader, executor: ThreadPoolExecutor
) -> None:
    versions = registry(loader, executor, "all")
    loader.pause_s = 0.1
    first, second = await asyncio.gather(
        versions.load("m", 1, reload=False), versions.load("m", 1, reload=False)
    )
    assert first is second and loader.events.count("build m:1") == 1
    # The default reloads: a fresh build replaces the loaded one, which is retired.
    third = await versions.load("m", 1)
    assert third is not first and first.served.closing and "retire 1" in loader.events


async def test_a_cancelled_load_retires_what_it_built_and_keeps_the_active_version(
    loader: Loader, executor: ThreadPoolExecutor
) -> None:
    versions = registry(loader, executor, "active")
    v1 = await versions.load("m", 1)
    gate = loader.gates[2] = threading.Event()
    loader.entered.clear()
    swap = asyncio.create_task(versions.load("m", 2))
    assert await asyncio.to_thread(loader.entered.wait, 10)
    swap.cancel()  # e.g. the agent shuts down mid-swap; the build thread runs on
    with pytest.raises(asyncio.CancelledError):
        await swap
    loader.retired.clear()
    gate.set()
    assert await asyncio.to_thread(loader.retired.wait, 10)  # built, then retired
    assert loader.events[-2:] == ["built m:2", "retire 2"]
    assert versions.active("m") is v1 and versions.versions("m") == [1]
    assert not v1.served.closing
