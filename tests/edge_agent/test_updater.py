"""The edge model updater against a real gateway (HTTP, agent token), a real
ModelRepository and the agent's real model slot, with inference running throughout."""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
from aiohttp import web

from cloud_gateway.service import Gateway, serve
from edge_agent.registry import ModelSlot
from edge_agent.updater import ModelUpdater
from models import signing
from models.bundle import bundle_sha256
from models.errors import EdgecloudError
from models.repository import ModelRepository
from offload.desired import Desired, WantedModel
from tests.cloud_gateway import conftest as gateway_fixtures
from tests.cloud_gateway.bundles import BAD_REASONS, MODEL, BundleSet
from tests.cloud_gateway.conftest import TOKENS, push
from tests.cloud_gateway.mqttutil import until
from tests.conftest import free_port

# The gateway's fixtures (real gateway on a free port, bundles, tokens), shared.
bundle_set = gateway_fixtures.bundle_set
tokens_file = gateway_fixtures.tokens_file
gateway_settings = gateway_fixtures.gateway_settings
gateway = gateway_fixtures.gateway
http = gateway_fixtures.http

_sha = functools.cache(bundle_sha256)


def desired(version: int, sha: str | None, url: str | None, rid: str = "r1") -> bytes:
    wanted = WantedModel(version=version, sha256=sha, url=url)
    return Desired(rollout_id=rid, models={MODEL: wanted}, issued_at=0).to_bytes()


class SlotTarget:
    """The updater's ModelTarget over one real ModelSlot (what EdgeAgent does per model)."""

    def __init__(self, slot: ModelSlot) -> None:
        self.slot = slot

    def serving(self, name: str) -> int | None:
        loaded = self.slot.loaded
        return loaded.manifest.version if loaded and loaded.manifest.name == name else None

    async def swap(self, name: str, version: int, topics: str | None = None) -> Any:
        return await self.slot.swap(name, version)

    async def remove(self, name: str) -> None:
        self.slot.close()


class Edge:
    """Repository + slot + updater + a request loop that must never fail."""

    def __init__(self, root: Path, bundles: BundleSet, token: str | None, keep: int = 3) -> None:
        self.keys = signing.load_trusted_keys(bundles.trusted_dir)
        self.repo = ModelRepository(root, trusted_keys=self.keys, check=False)
        self.executor = ThreadPoolExecutor(max_workers=2)
        self.slot = ModelSlot(root, self.executor, kind="onnxruntime", warmup_batches=(1,))
        self.reports: list[dict[str, Any]] = []
        self.updater = ModelUpdater(
            "edge-1",
            "site-a",
            self.repo,
            SlotTarget(self.slot),
            token,
            self.keys,
            self.reports.append,
            keep=keep,
            retry_base_s=0.2,
            retry_cap_s=0.5,
        )
        self.served: list[tuple[int, int]] = []
        self.failed: list[tuple[int, str]] = []
        self._task: asyncio.Task[None] | None = None

    async def start(self, bundle: Path) -> None:
        await asyncio.to_thread(self.repo.install, bundle)
        await self.slot.load(MODEL)
        self._task = asyncio.create_task(self._requests())

    async def _requests(self) -> None:
        loop = asyncio.get_running_loop()
        x = np.random.default_rng(0).normal(size=(4, 100, 6)).astype(np.float32)
        seq = 0
        while True:
            seq += 1
            lease = self.slot.lease()
            try:
                await loop.run_in_executor(self.executor, lease.backend.infer, {"input": x})
                self.served.append((seq, lease.manifest.version))
            except EdgecloudError as exc:
                self.failed.append((seq, exc.message))
            finally:
                lease.release()
            await asyncio.sleep(0.005)

    @property
    def version(self) -> int:
        return self.slot.active[0].version

    def settled(self, version: int) -> bool:
        """The updater reported ``version`` done (not merely the slot switched to it)."""
        state = self.updater.state
        return (state["state"], state["version"]) == ("ok", version) and self.version == version

    def states(self) -> list[str]:
        return [r["state"] for r in self.reports]

    def check_no_loss(self) -> None:
        assert not self.failed, self.failed[:3]
        seqs = [s for s, _ in self.served]
        assert seqs == list(range(1, len(seqs) + 1))
        assert len(seqs) >= 3, "the request loop did not run"

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.updater.close()
        self.slot.close()
        self.executor.shutdown(wait=True)


@pytest.fixture
async def edge(tmp_path: Path, bundle_set: BundleSet) -> AsyncIterator[Edge]:
    e = Edge(tmp_path / "repo", bundle_set, TOKENS["agent"])
    await e.start(bundle_set.good[1])
    await asyncio.sleep(0.05)
    yield e
    await e.close()


def _url(gw: Gateway, version: int) -> str:
    return gw.bundle_url(MODEL, version)


async def test_update_downloads_verifies_and_swaps_without_losing_a_request(
    gateway: Gateway, http: aiohttp.ClientSession, bundle_set: BundleSet, edge: Edge
) -> None:
    await push(http, gateway, bundle_set.good[2])
    await asyncio.sleep(0.1)
    state = await edge.updater.handle_desired(
        desired(2, _sha(bundle_set.good[2]), _url(gateway, 2))
    )
    assert state["state"] == "ok", state
    assert (state["model"], state["version"], state["rollout_id"]) == (MODEL, 2, "r1")
    assert edge.states() == ["downloading", "verifying", "swapping", "ok"]
    assert edge.version == 2 and edge.repo.active(MODEL) == 2
    await asyncio.sleep(0.1)
    edge.check_no_loss()
    versions = [v for _, v in edge.served]
    assert versions[0] == 1 and versions[-1] == 2 and versions == sorted(versions)
    # The same desired state again (e.g. the retained message after a reconnect): no-op.
    before = len(edge.reports)
    await edge.updater.handle_desired(desired(2, _sha(bundle_set.good[2]), _url(gateway, 2)))
    assert len(edge.reports) == before and edge.updater.attempts == 1


@pytest.fixture
async def bad_server(bundle_set: BundleSet) -> AsyncIterator[str]:
    """A plain HTTP server handing out the bad bundles (the gateway would refuse them)."""
    app = web.Application()
    app.router.add_static("/bad", bundle_set.root / "bad")
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield f"http://127.0.0.1:{port}/bad"
    await runner.cleanup()


@pytest.mark.parametrize("kind", sorted(BAD_REASONS))
async def test_forced_bad_bundle_is_refused_and_serving_continues(
    bad_server: str, bundle_set: BundleSet, edge: Edge, kind: str
) -> None:
    bundle = bundle_set.bad[kind]
    payload = desired(9, _sha(bundle), f"{bad_server}/{bundle.name}")
    state = await edge.updater.handle_desired(payload)
    assert state["state"] == "failed" and state["version"] == 9
    assert state["reason"].startswith(BAD_REASONS[kind] + ":"), state["reason"]
    assert edge.version == 1 and edge.repo.versions(MODEL) == [1]
    assert edge.repo.active(MODEL) == 1
    assert not list(edge.repo.root.glob(".download-*"))
    # Asked again, it refuses at once without fetching the same bytes again.
    again = await edge.updater.handle_desired(payload)
    assert again["state"] == "failed" and edge.updater.attempts == 1
    await asyncio.sleep(0.05)
    edge.check_no_loss()


async def test_forced_wrong_hash_is_refused(
    gateway: Gateway, http: aiohttp.ClientSession, bundle_set: BundleSet, edge: Edge
) -> None:
    await push(http, gateway, bundle_set.good[2])
    state = await edge.updater.handle_desired(desired(2, "0" * 64, _url(gateway, 2)))
    assert state["state"] == "failed" and state["reason"].startswith("hash-mismatch:")
    assert edge.version == 1 and edge.repo.versions(MODEL) == [1]
    edge.check_no_loss()


@pytest.mark.parametrize(
    "payload",
    [
        b"{not json",
        b'{"models": {"motion-edge": {"version": 2, "url": "file:///etc/passwd"}}}',
        b'{"models": {"../evil": {"version": 2}}}',
    ],
)
async def test_malformed_desired_state_is_refused(edge: Edge, payload: bytes) -> None:
    state = await edge.updater.handle_desired(payload)
    assert state["state"] == "failed" and state["reason"].startswith("invalid-input:")
    assert edge.version == 1


async def test_cleared_retained_message_is_ignored(edge: Edge) -> None:
    state = await edge.updater.handle_desired(b"")
    assert state["state"] == "idle" and edge.reports == [] and edge.version == 1


async def test_not_installed_and_no_url_is_refused(edge: Edge) -> None:
    state = await edge.updater.handle_desired(desired(5, None, None))
    assert state["state"] == "failed" and "not installed locally" in state["reason"]
    assert edge.version == 1


async def test_bad_token_is_refused_with_reason(
    gateway: Gateway, http: aiohttp.ClientSession, bundle_set: BundleSet, tmp_path: Path
) -> None:
    await push(http, gateway, bundle_set.good[2])
    e = Edge(tmp_path / "repo", bundle_set, "wrong-token")
    await e.start(bundle_set.good[1])
    try:
        state = await e.updater.handle_desired(
            desired(2, _sha(bundle_set.good[2]), _url(gateway, 2))
        )
        assert state["state"] == "failed" and state["reason"].startswith("unauthenticated:")
        assert e.version == 1
        # Auth failures are not remembered: a redelivery (rotated token) tries again.
        e.updater.token = TOKENS["agent"]
        state = await e.updater.handle_desired(
            desired(2, _sha(bundle_set.good[2]), _url(gateway, 2))
        )
        assert state["state"] == "ok" and e.version == 2
    finally:
        await e.close()


async def test_gateway_down_keeps_serving_and_catches_up(
    gateway_settings: Callable[..., Any], bundle_set: BundleSet, edge: Edge
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}/api/v1/models/{MODEL}/versions/2/bundle"
    state = await edge.updater.handle_desired(desired(2, _sha(bundle_set.good[2]), url))
    assert state["state"] == "failed" and "retrying" in state["reason"], state
    await asyncio.sleep(0.6)  # a few retries against nothing
    assert edge.version == 1
    served_while_down = len(edge.served)
    async with serve(gateway_settings(port=port)) as gw, aiohttp.ClientSession() as session:
        await push(session, gw, bundle_set.good[2])
        # The slot switches inside swap(), before the updater reports "ok": wait on the report.
        await until(lambda: edge.settled(2), what="catch-up after the outage")
    assert edge.version == 2 and edge.repo.active(MODEL) == 2
    assert len(edge.served) > served_while_down
    edge.check_no_loss()


async def test_local_versions_give_instant_rollback_and_prune_keeps_k(
    gateway: Gateway, http: aiohttp.ClientSession, bundle_set: BundleSet, tmp_path: Path
) -> None:
    for v in (2, 4):
        await push(http, gateway, bundle_set.good[v])
    e = Edge(tmp_path / "repo", bundle_set, TOKENS["agent"], keep=2)
    await e.start(bundle_set.good[1])
    try:
        ok = await e.updater.handle_desired(desired(2, _sha(bundle_set.good[2]), _url(gateway, 2)))
        assert ok["state"] == "ok"
        e.reports.clear()
        # Rollback: v1 is still installed, so no url or download is needed.
        back = await e.updater.handle_desired(desired(1, None, None, rid="r2"))
        assert back["state"] == "ok" and e.version == 1
        assert e.states() == ["verifying", "swapping", "ok"]
        ok = await e.updater.handle_desired(desired(4, _sha(bundle_set.good[4]), _url(gateway, 4)))
        assert ok["state"] == "ok" and e.version == 4
        assert e.repo.versions(MODEL) == [2, 4]  # keep=2: the newest two, active included
        e.check_no_loss()
    finally:
        await e.close()


async def test_a_newer_desired_state_supersedes_a_retrying_one(
    gateway: Gateway, http: aiohttp.ClientSession, bundle_set: BundleSet, edge: Edge
) -> None:
    await push(http, gateway, bundle_set.good[2])
    dead = f"http://127.0.0.1:{free_port()}/nothing"
    first = await edge.updater.handle_desired(desired(3, "a" * 64, dead))
    assert first["state"] == "failed" and "retrying" in first["reason"]
    state = await edge.updater.handle_desired(
        desired(2, _sha(bundle_set.good[2]), _url(gateway, 2))
    )
    assert state["state"] == "ok" and edge.version == 2
    await asyncio.sleep(0.8)  # the abandoned target is not retried any more
    assert edge.version == 2 and edge.updater.state["version"] == 2
