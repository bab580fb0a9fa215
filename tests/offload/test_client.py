"""OffloadClient against real offload-server processes: results, errors, deadlines, breaker."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from models.errors import DeadlineExceeded, InvalidInput, NotFound, Unavailable
from offload.breaker import BreakerConfig
from offload.client import OffloadClient
from tests.conftest import free_port
from tests.offload.conftest import ADMIN_TOKEN, ServerProcess
from tests.offload.graphs import WIDTH, affine_model


async def wait_until(predicate: Callable[[], bool], limit_s: float) -> None:
    for _ in range(int(limit_s / 0.02)):
        if predicate():
            return
        await asyncio.sleep(0.02)


def x_rows(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, WIDTH)).astype(np.float32)


@pytest.mark.parametrize("stream", [False, True], ids=["unary", "stream"])
async def test_infer_versions_and_live_estimates(server: ServerProcess, stream: bool) -> None:
    async with OffloadClient(server.target, stream=stream) as client:
        xs = [x_rows(i + 1, seed=i) for i in range(6)]
        outs = await asyncio.gather(
            *(
                client.infer("affine", 1 + i % 2, {"x": x}, time.monotonic() + 5.0)
                for i, x in enumerate(xs)
            )
        )
        for i, (x, out) in enumerate(zip(xs, outs, strict=True)):
            np.testing.assert_allclose(out["y"], x * 2 + 1 + i % 2)
        newest = await client.infer("affine", None, {"x": xs[0]}, time.monotonic() + 5.0)
        np.testing.assert_allclose(newest["y"], xs[0] * 2 + 2)
        stats = client.stats
    assert stats.calls == 7 and stats.failures == 0
    assert stats.breaker_state == "closed"
    assert 0 < stats.server_ewma_s < stats.rtt_ewma_s <= stats.rtt_p95_s * 1.5


async def test_errors_map_into_the_exception_tree(server: ServerProcess) -> None:
    async with OffloadClient(server.target, breaker=BreakerConfig(failure_threshold=1)) as client:
        with pytest.raises(NotFound, match="'ghost' is not loaded"):
            await client.infer("ghost", None, {"x": x_rows(1)}, time.monotonic() + 5.0)
        with pytest.raises(InvalidInput, match="expects \\[-1, 4\\]"):
            await client.infer(
                "affine", 1, {"x": np.ones((1, 3), np.float32)}, time.monotonic() + 5.0
            )
        # The remote answered: client mistakes never open the breaker.
        assert client.available and client.stats.breaker_state == "closed"
        with pytest.raises(DeadlineExceeded):
            await client.infer("affine", 1, {"x": x_rows(1)}, time.monotonic() - 0.001)


async def test_deadline_is_the_remaining_budget(server: ServerProcess) -> None:
    async with OffloadClient(server.target) as client:
        started = time.monotonic()
        with pytest.raises(DeadlineExceeded):
            await client.infer("slow", None, {"x": x_rows(1)}, started + 0.015)
        assert time.monotonic() - started < 0.2
        assert client.stats.failures == 1


async def test_unavailable_is_retried_only_inside_the_budget() -> None:
    target = f"127.0.0.1:{free_port()}"  # nothing listens here
    async with OffloadClient(target, max_retries=50, retry_backoff_s=0.01) as client:
        started = time.monotonic()
        with pytest.raises((Unavailable, DeadlineExceeded)):
            await client.infer("affine", 1, {"x": x_rows(1)}, started + 0.25)
        elapsed = time.monotonic() - started
    assert 0.05 < elapsed < 0.4, elapsed  # it retried, and it stopped at the deadline


async def test_repository_helpers(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    affine_model(repo / "affine" / "1" / "model.onnx", 1)
    proc = ServerProcess(repo, "--log-level", "WARNING")
    try:
        async with OffloadClient(proc.target, admin_token=ADMIN_TOKEN) as client:
            affine_model(repo / "affine" / "5" / "model.onnx", 5)
            await client.load_model("affine", 5)
            assert await client.model_ready("affine", 5)
            index = await client.repository_index()
            assert {(m["name"], m["version"], m["state"]) for m in index} == {
                ("affine", "1", "READY"),
                ("affine", "5", "READY"),
            }
            await client.unload_model("affine", 1)
            assert not await client.model_ready("affine", 1)
            out = await client.infer("affine", None, {"x": x_rows(1)}, time.monotonic() + 5)
            np.testing.assert_allclose(out["y"], x_rows(1) * 2 + 5)
            with pytest.raises(NotFound):
                await client.unload_model("affine", 1)
    finally:
        proc.terminate()


@pytest.mark.slow
async def test_server_killed_mid_load_breaker_opens_then_recovers(repository: Path) -> None:
    proc = ServerProcess(repository, "--log-level", "WARNING")
    port = proc.port
    config = BreakerConfig(failure_threshold=3, open_s=0.5, half_open_probes=1)
    budget = 0.3
    async with OffloadClient(proc.target, breaker=config, max_retries=2) as client:
        stop = asyncio.Event()
        outcomes: list[tuple[str, float]] = []

        async def load() -> None:
            while not stop.is_set():
                started = time.monotonic()
                try:
                    await client.infer("affine", 1, {"x": x_rows(1)}, started + budget)
                    outcomes.append(("ok", time.monotonic() - started))
                except (Unavailable, DeadlineExceeded) as exc:
                    outcomes.append((type(exc).__name__, time.monotonic() - started))
                    await asyncio.sleep(0.01)

        workers = [asyncio.create_task(load()) for _ in range(4)]
        await asyncio.sleep(0.5)
        assert outcomes and all(kind == "ok" for kind, _ in outcomes)
        proc.kill()
        killed_at = len(outcomes)
        await wait_until(lambda: client.stats.breaker_state == "open", 5.0)
        assert client.stats.breaker_state == "open"
        assert not client.available
        await asyncio.sleep(0.3)
        failures = [o for o in outcomes[killed_at:] if o[0] != "ok"]
        assert failures
        assert all(seconds <= budget + 0.15 for _, seconds in failures), failures

        replacement = ServerProcess(repository, "--log-level", "WARNING", port=port)
        try:
            await wait_until(lambda: client.stats.breaker_state == "closed", 15.0)
            assert client.stats.breaker_state == "closed"
            recovered = len(outcomes)
            await asyncio.sleep(0.3)
            assert any(kind == "ok" for kind, _ in outcomes[recovered:])
        finally:
            stop.set()
            await asyncio.gather(*workers)
            replacement.terminate()
