"""The edge model updater against a real gateway (HTTP, agent token), a real
ModelRepository and the agent's real model slot, with inference running throughout.

Desired state is signed with a test gateway key the updater trusts; the refusals of
issue 16 (unsigned, foreign, stale, downgrade, credential to a foreign origin) are
checked here at the unit level and in tests/cloud_gateway/test_attacks.py end to end.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import itertools
import json
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bus.desired import Desired, WantedModel, sign_desired
from cloud_gateway.service import Gateway, serve
from edge_agent.model.slot import ModelSlot
from edge_agent.model.updater import ModelUpdater, Sequences, SlotTarget
from models import signing
from models.bundle import bundle_sha256
from models.errors import EdgecloudError
from models.repository import ModelRepository
from tests.cloud_gateway import conftest as gateway_fixtures
from tests.cloud_gateway.bundles import BAD_REASONS, MODEL, BundleSet
from tests.cloud_gateway.conftest import TOKENS, push
from tests.cloud_gateway.mqttutil import until
from tests.conftest import free_port

# The gateway's fixtures (real gateway on a free port, bundles, tokens), shared.
bundle_set = gateway_fixtures.bundle_set
tokens_file = gateway_fixtures.tokens_file
gateway_settings = gateway_fixtures.gateway_settings
postgres_url = gateway_fixtures.postgres_url
database_url = gateway_fixtures.database_url
gateway = gateway_fixtures.gateway
http = gateway_fixtures.http

_sha = functools.cache(bundle_sha256)

#: The gateway's desired-state key as the agents of these tests trust it.
GATEWAY_KEY = Ed25519PrivateKey.generate()
GATEWAY_KEYS = {signing.key_id(GATEWAY_KEY.public_key()): GATEWAY_KEY.public_key()}
_sequence = itertools.count(1)


def desired(
    version: int,
    sha: str | None,
    url: str | None,
    rid: str = "r1",
    *,
    target: str = "edge-1",
    kind: str = "agent",
    key: Ed25519PrivateKey = GATEWAY_KEY,
    sequence: int | None = None,
    **extra: Any,
) -> bytes:
    wanted = WantedModel(version=version, sha256=sha, url=url, **extra)
    doc = Desired(
        target=target,
        target_kind=kind,  # type: ignore[arg-type]
        sequence=next(_sequence) if sequence is None else sequence,
        rollout_id=rid,
        models={MODEL: wanted},
        issued_at=0.0,
    )
    return sign_desired(doc, key)


class Edge:
    """Repository + slot + updater + a request loop that must never fail."""

    def __init__(
        self,
        root: Path,
        bundles: BundleSet,
        token: str | None,
        keep: int = 3,
        *,
        gateway_url: str | None = None,
    ) -> None:
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
            gateway_url=gateway_url,
            gateway_keys=GATEWAY_KEYS,
            sequence_file=root / ".desired-sequence.json",
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
async def edge(tmp_path: Path, bundle_set: BundleSet, gateway: Gateway) -> AsyncIterator[Edge]:
    e = Edge(tmp_path / "repo", bundle_set, TOKENS["agent"], gateway_url=gateway.url)
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


@pytest.fixture
async def bad_edge(tmp_path: Path, bundle_set: BundleSet, bad_server: str) -> AsyncIterator[Edge]:
    """An agent whose configured gateway is the bad-bundle server."""
    e = Edge(tmp_path / "repo", bundle_set, TOKENS["agent"], gateway_url=bad_server)
    await e.start(bundle_set.good[1])
    yield e
    await e.close()


@pytest.mark.parametrize("kind", sorted(BAD_REASONS))
async def test_forced_bad_bundle_is_refused_and_serving_continues(
    bad_server: str, bundle_set: BundleSet, bad_edge: Edge, kind: str
) -> None:
    edge = bad_edge
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


def _signed(document: dict[str, Any]) -> bytes:
    text = json.dumps(document)
    sig = signing.sign(GATEWAY_KEY, text.encode())
    return json.dumps({"document": text, **sig}).encode()


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"{not json", "invalid-input: unsigned or malformed"),
        # Issue 16, attack 3: a plain downgrade message, as anyone could publish it.
        (
            b'{"models": {"motion-edge": {"version": 1, "sha256": null, "url": null}}}',
            "invalid-input: unsigned or malformed",
        ),
        (
            _signed(
                {
                    "target": "edge-1",
                    "sequence": 10**6,
                    "models": {"motion-edge": {"version": 2, "url": "file:///etc/passwd"}},
                }
            ),
            "invalid-input: bad desired state: models.motion-edge.url",
        ),
        (
            _signed({"target": "edge-1", "sequence": 10**6, "models": {"../e": {"version": 2}}}),
            "invalid-input: bad desired state",
        ),
        (desired(2, None, None, key=Ed25519PrivateKey.generate()), "unknown-signer:"),
        (desired(2, None, None, target="edge-2"), "permission-denied: desired state for agent"),
        (desired(2, None, None, target="site-b", kind="site"), "permission-denied:"),
    ],
    ids=["not-json", "unsigned", "bad-url", "bad-name", "foreign-key", "other-agent", "other-site"],
)
async def test_unauthenticated_or_foreign_desired_state_is_refused(
    edge: Edge, payload: bytes, reason: str
) -> None:
    state = await edge.updater.handle_desired(payload)
    assert state["state"] == "failed", state
    assert state["reason"].startswith(f"refused desired state: {reason}"), state["reason"]
    assert edge.version == 1 and edge.repo.versions(MODEL) == [1]
    assert edge.updater.refused_messages == 1 and edge.updater.attempts == 0


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
    e = Edge(tmp_path / "repo", bundle_set, "wrong-token", gateway_url=gateway.url)
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
    gateway_settings: Callable[..., Any], bundle_set: BundleSet, tmp_path: Path
) -> None:
    port = free_port()
    edge = Edge(
        tmp_path / "repo", bundle_set, TOKENS["agent"], gateway_url=f"http://127.0.0.1:{port}"
    )
    await edge.start(bundle_set.good[1])
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
    await edge.close()


async def test_local_versions_give_instant_rollback_and_prune_keeps_k(
    gateway: Gateway, http: aiohttp.ClientSession, bundle_set: BundleSet, tmp_path: Path
) -> None:
    for v in (2, 4):
        await push(http, gateway, bundle_set.good[v])
    e = Edge(tmp_path / "repo", bundle_set, TOKENS["agent"], keep=2, gateway_url=gateway.url)
    await e.start(bundle_set.good[1])
    try:
        ok = await e.updater.handle_desired(desired(2, _sha(bundle_set.good[2]), _url(gateway, 2)))
        assert ok["state"] == "ok"
        e.reports.clear()
        # Rollback: v1 is still installed, so no url or download is needed.
        back = await e.updater.handle_desired(desired(1, None, None, rid="r2", rollback=True))
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
    # Version 3 is not in the registry yet: the gateway answers 404, which is retried.
    first = await edge.updater.handle_desired(desired(3, "a" * 64, _url(gateway, 3)))
    assert first["state"] == "failed" and "retrying" in first["reason"], first
    state = await edge.updater.handle_desired(
        desired(2, _sha(bundle_set.good[2]), _url(gateway, 2))
    )
    assert state["state"] == "ok" and edge.version == 2
    await asyncio.sleep(0.8)  # the abandoned target is not retried any more
    assert edge.version == 2 and edge.updater.state["version"] == 2


async def test_replayed_and_redelivered_documents(
    gateway: Gateway, http: aiohttp.ClientSession, bundle_set: BundleSet, tmp_path: Path
) -> None:
    """A redelivered retained copy is a silent no-op; an older signed document is refused
    as stale, also by a restarted updater (the sequence is persisted)."""
    await push(http, gateway, bundle_set.good[2])
    old = desired(1, None, None, sequence=10)
    new = desired(2, _sha(bundle_set.good[2]), _url(gateway, 2), sequence=11)
    e = Edge(tmp_path / "repo", bundle_set, TOKENS["agent"], gateway_url=gateway.url)
    await e.start(bundle_set.good[1])
    try:
        assert (await e.updater.handle_desired(old))["state"] == "ok"
        assert (await e.updater.handle_desired(new))["state"] == "ok" and e.version == 2
        reports = len(e.reports)
        assert (await e.updater.handle_desired(new))["state"] == "ok"  # retained redelivery
        assert len(e.reports) == reports and e.updater.refused_messages == 0
        state = await e.updater.handle_desired(old)
        assert state["state"] == "failed" and e.version == 2
        assert state["reason"] == (
            "refused desired state: invalid-input: stale desired state: sequence 10 is not "
            "newer than 11, the last accepted for agent:edge-1 (a replayed message)"
        )
    finally:
        await e.close()
    assert oct((tmp_path / "repo" / ".desired-sequence.json").stat().st_mode & 0o777) == "0o600"
    restarted = Edge(tmp_path / "repo", bundle_set, TOKENS["agent"], gateway_url=gateway.url)
    await restarted.start(bundle_set.good[1])  # installs nothing new: v1 is there already
    try:
        await restarted.slot.swap(MODEL, 2)
        state = await restarted.updater.handle_desired(old)
        assert state["state"] == "failed" and "stale desired state" in state["reason"]
        assert restarted.version == 2
    finally:
        await restarted.close()


async def test_downgrade_needs_an_explicit_signed_rollback(
    gateway: Gateway, http: aiohttp.ClientSession, bundle_set: BundleSet, edge: Edge
) -> None:
    await push(http, gateway, bundle_set.good[2])
    up = await edge.updater.handle_desired(desired(2, _sha(bundle_set.good[2]), _url(gateway, 2)))
    assert up["state"] == "ok" and edge.version == 2
    down = await edge.updater.handle_desired(desired(1, None, None))
    assert down["state"] == "failed" and edge.version == 2
    assert down["reason"] == (
        "downgrade refused: motion-edge version 1 is older than the active 2 and the "
        "desired state does not mark it as a rollback"
    )
    back = await edge.updater.handle_desired(desired(1, None, None, rollback=True))
    assert back["state"] == "ok" and edge.version == 1
    edge.check_no_loss()


@pytest.fixture
async def attacker() -> AsyncIterator[tuple[str, list[dict[str, str]]]]:
    """An HTTP server recording every request it gets (and redirecting /redirect)."""
    seen: list[dict[str, str]] = []

    async def record(request: web.Request) -> web.StreamResponse:
        seen.append({"path": request.path, **request.headers})
        if request.path == "/redirect":
            raise web.HTTPFound(str(request.query["to"]))
        return web.Response(body=b"x")

    app = web.Application()
    app.router.add_get("/{tail:.*}", record)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield f"http://127.0.0.1:{port}", seen
    await runner.cleanup()


async def test_the_credential_goes_only_to_the_gateway_origin(
    gateway: Gateway,
    http: aiohttp.ClientSession,
    bundle_set: BundleSet,
    edge: Edge,
    attacker: tuple[str, list[dict[str, str]]],
) -> None:
    base, seen = attacker
    sha = _sha(bundle_set.good[2])
    port = gateway.url.rsplit(":", 1)[1]
    for url, shown in (
        (f"{base}/x.bundle", base),  # issue 16, attack 1
        (f"http://localhost:{port}/x.bundle", f"http://localhost:{port}"),  # other host
        (f"https://127.0.0.1:{port}/x.bundle", f"https://127.0.0.1:{port}"),  # other scheme
    ):
        state = await edge.updater.handle_desired(desired(2, sha, url))
        assert state["state"] == "failed"
        assert state["reason"] == (
            f"permission-denied: download URL origin {shown} is not the configured gateway "
            f"{gateway.url}; the agent credential is sent only there"
        )
    assert seen == [] and edge.version == 1
    await push(http, gateway, bundle_set.good[2])
    state = await edge.updater.handle_desired(desired(2, sha, _url(gateway, 2)))
    assert state["state"] == "ok" and edge.version == 2


async def test_a_redirect_from_the_gateway_is_not_followed(
    bundle_set: BundleSet, tmp_path: Path, attacker: tuple[str, list[dict[str, str]]]
) -> None:
    base, seen = attacker
    e = Edge(tmp_path / "repo", bundle_set, TOKENS["agent"], gateway_url=base)
    await e.start(bundle_set.good[1])
    elsewhere = base.replace("127.0.0.1", "localhost") + "/stolen"
    try:
        url = f"{base}/redirect?to={elsewhere}"
        state = await e.updater.handle_desired(desired(2, "a" * 64, url))
        assert state["state"] == "failed" and "HTTP 302" in state["reason"], state
        assert [r["path"] for r in seen] == ["/redirect"]  # never /stolen
    finally:
        await e.close()


async def test_no_gateway_url_means_no_download(bundle_set: BundleSet, tmp_path: Path) -> None:
    e = Edge(tmp_path / "repo", bundle_set, TOKENS["agent"])
    await e.start(bundle_set.good[1])
    try:
        state = await e.updater.handle_desired(desired(2, "a" * 64, "http://127.0.0.1:1/b"))
        assert state["state"] == "failed"
        assert state["reason"].startswith("config-error: no --gateway-url configured")
    finally:
        await e.close()


async def test_state_absent_calls_remove_and_topics_reach_swap(
    edge: Edge, bundle_set: BundleSet
) -> None:
    """A single-slot agent (SlotTarget) cannot remove or rebind: clear refusals."""
    state = await edge.updater.handle_desired(desired(1, None, None, state="absent"))
    assert state["state"] == "failed" and edge.version == 1
    assert state["reason"] == "invalid-input: this agent serves only motion-edge: cannot remove it"
    await asyncio.to_thread(edge.repo.install, bundle_set.good[2])
    state = await edge.updater.handle_desired(desired(2, None, None, topics="sensors/a/+/+"))
    assert state["state"] == "failed" and edge.version == 1
    assert "cannot rebind" in state["reason"]


async def test_a_document_for_the_agents_site_is_accepted_with_its_own_sequence(
    gateway: Gateway, http: aiohttp.ClientSession, bundle_set: BundleSet, edge: Edge
) -> None:
    """Agent and site documents count their sequences separately: a site document
    older than the last agent document is not stale."""
    await push(http, gateway, bundle_set.good[2])
    mine = await edge.updater.handle_desired(desired(1, None, None, sequence=50))
    assert mine["state"] == "ok"
    site = desired(
        2, _sha(bundle_set.good[2]), _url(gateway, 2), target="site-a", kind="site", sequence=7
    )
    state = await edge.updater.handle_desired(site)
    assert state["state"] == "ok" and edge.version == 2
    assert edge.updater.sequences.last == {"agent:edge-1": 50, "site:site-a": 7}


def test_an_unreadable_sequence_file_starts_from_zero(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from edge_agent.model.updater import Sequences

    path = tmp_path / ".desired-sequence.json"
    path.write_text("{not json")
    seqs = Sequences(path)
    assert seqs.last == {} and "accepting from sequence 0" in caplog.text
    seqs.save(seqs.accept("agent:a", 5, "d1"))
    older = seqs.accept("agent:a", 6, "d2")
    seqs.save(seqs.accept("agent:a", 7, "d3"))
    seqs.save(older)  # a late writer with an older snapshot does not win
    assert Sequences(path).last == {"agent:a": 7}


async def test_a_document_accepted_but_not_applied_before_a_crash_is_applied_on_restart(
    gateway: Gateway, http: aiohttp.ClientSession, bundle_set: BundleSet, tmp_path: Path
) -> None:
    """Killed between persisting a document's sequence and installing its version: after
    the restart the broker redelivers the retained copy (same sequence, same bytes), and
    the updater must apply it rather than treat it as done (reliability,
    agent-sigkill-mid-swap: the rollout's last wave never converged)."""
    await push(http, gateway, bundle_set.good[2])
    new = desired(2, _sha(bundle_set.good[2]), _url(gateway, 2), sequence=21)
    site = desired(1, None, None, target="site-a", kind="site", sequence=20)
    (tmp_path / "repo").mkdir()
    crashed = Sequences(tmp_path / "repo" / ".desired-sequence.json")
    crashed.accept("site:site-a", 20, hashlib.sha256(site).hexdigest())
    crashed.save(crashed.accept("agent:edge-1", 21, hashlib.sha256(new).hexdigest()))
    e = Edge(tmp_path / "repo", bundle_set, TOKENS["agent"], gateway_url=gateway.url)
    await e.start(bundle_set.good[1])
    try:
        # The older site document is redelivered too: it must not win over the newer one.
        assert (await e.updater.handle_desired(site))["state"] != "failed" and e.version == 1
        state = await e.updater.handle_desired(new)
        assert state["state"] == "ok" and e.version == 2, state
        reports = len(e.reports)
        assert (await e.updater.handle_desired(new))["state"] == "ok"  # now a no-op
        assert len(e.reports) == reports and e.updater.refused_messages == 0
    finally:
        await e.close()
