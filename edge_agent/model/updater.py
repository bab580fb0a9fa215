"""The edge model updater: signed desired state in, verified zero-downtime swap out.

A message on ``fleet/{agent}/desired`` or ``fleet/{site}/desired`` is accepted only if
it is the gateway's signed envelope (``bus.desired.SignedDesired``, verified with
the gateway key the agent trusts by configuration), names this agent or its site, and
carries a sequence number newer than the last one accepted for that target (persisted in
the repository directory, so a replayed old state is refused after a restart too).
Anything else is refused with a reason in the heartbeat ``update`` field and the log,
and nothing changes.

For each model of an accepted document it refuses a version older than the active one
unless the document marks it an explicit rollback; downloads the bundle (unless the
version is still installed: instant rollback) only from the configured gateway origin
(scheme, host and port compared exactly; the agent credential never goes anywhere
else, and redirects are not followed); checks its sha256; installs it (signature,
hashes, graph, test vectors); swaps load-before-unload through :class:`ModelTarget`;
activates; prunes to ``keep`` versions; and reports each step. ``state: absent``
removes the model. Network trouble is retried with backoff until it works or a newer
desired state arrives.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import shutil
import ssl
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

import aiohttp

from bus.broker import backoff_delays
from bus.desired import Desired, UpdatePhase, UpdateState, WantedModel, verify_desired
from models.errors import (
    ConfigError,
    EdgecloudError,
    HashMismatch,
    InvalidInput,
    PermissionDenied,
    Unauthenticated,
)
from models.manifest import Manifest
from models.repository import ModelRepository
from models.signing import TrustedKeys

log = logging.getLogger(__name__)

_HTTP_ERRORS: dict[int, type[EdgecloudError]] = {401: Unauthenticated, 403: PermissionDenied}
#: Not remembered as refused (a token may be rotated), unlike bad bytes that stay bad.
_NOT_CACHED: tuple[type[EdgecloudError], ...] = (Unauthenticated, PermissionDenied)


class ModelTarget(Protocol):
    """What the updater needs from the agent's models."""

    def serving(self, name: str) -> int | None:
        """Active version of ``name``, or None."""
        ...

    async def swap(self, name: str, version: int, topics: str | None) -> Manifest:
        """Load and bind ``name:version`` (load before unload); ``topics`` None: unchanged."""
        ...

    async def remove(self, name: str) -> None: ...

    def topics_of(self, name: str) -> str | None:
        """The topic filter ``name`` is bound to (None: the default model, or not served)."""
        ...


class SlotTarget:
    """:class:`ModelTarget` over one ``edge_agent.model.slot.ModelSlot`` (an agent serving
    a single model): it cannot rebind topics or remove its only model."""

    def __init__(self, slot: Any) -> None:
        self.slot = slot

    def topics_of(self, name: str) -> str | None:
        return None

    def serving(self, name: str) -> int | None:
        try:
            manifest, _ = self.slot.active
        except EdgecloudError:
            return None
        return manifest.version if manifest.name == name else None

    async def swap(self, name: str, version: int, topics: str | None) -> Manifest:
        if topics is not None:
            raise InvalidInput("this agent serves one model on fixed topics: cannot rebind")
        manifest: Manifest = await self.slot.swap(name, version)
        return manifest

    async def remove(self, name: str) -> None:
        raise InvalidInput(f"this agent serves only {name}: cannot remove it")


def origin(url: str) -> tuple[str, str, int]:
    """(scheme, host, port) with the default port made explicit; InvalidInput if absent."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    try:
        port = parts.port or {"http": 80, "https": 443}.get(scheme)
    except ValueError:
        port = None
    if scheme not in ("http", "https") or not parts.hostname or port is None:
        raise InvalidInput(f"not an http(s) URL with a host: {url[:200]!r}")
    return scheme, parts.hostname.lower(), port


def _show(o: tuple[str, str, int]) -> str:
    return f"{o[0]}://{o[1]}:{o[2]}"


class Sequences:
    """The last accepted desired-state sequence per target, in a small JSON file (0600)
    written atomically (off the event loop) before the document is acted on."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.last: dict[str, int] = {}
        self.digests: dict[str, str] = {}
        self._generation = self._saved = 0
        self._lock = threading.Lock()
        if path is not None and path.exists():
            try:
                data = json.loads(path.read_text())
                self.last = {str(k): int(v) for k, v in data.get("sequences", {}).items()}
                self.digests = {str(k): str(v) for k, v in data.get("digests", {}).items()}
            except (OSError, ValueError, TypeError, AttributeError) as exc:
                # Failing closed would brick the agent; starting from zero only re-admits
                # documents the gateway signed (still verified), so warn and go on.
                log.error("cannot read %s (%s): accepting from sequence 0", path, exc)

    def seen(self, target: str) -> tuple[int, str | None]:
        """The last accepted sequence of ``target`` (0: none) and its message digest."""
        return self.last.get(target, 0), self.digests.get(target)

    def newest(self) -> int:
        """The highest sequence accepted for any target (the gateway numbers the agent's
        and the site's documents from one counter, so this is the newest document)."""
        return max(self.last.values(), default=0)

    def accept(self, target: str, sequence: int, digest: str) -> tuple[int, str]:
        """Record in memory at once (the loop checks and accepts without awaiting in
        between); returns the snapshot :meth:`save` writes."""
        self.last[target] = sequence
        self.digests[target] = digest
        self._generation += 1
        return self._generation, json.dumps({"sequences": self.last, "digests": self.digests})

    def save(self, snapshot: tuple[int, str]) -> None:
        """Write a snapshot (in an executor thread); an older one never overwrites a newer."""
        generation, text = snapshot
        if self.path is None:
            return
        with self._lock:
            if generation <= self._saved:
                return
            tmp = self.path.with_name(f".{self.path.name}.tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(text)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
            self._saved = generation


class _Retry(Exception):
    """A transient failure (network, gateway 5xx): try again later."""


class ModelUpdater:
    """Applies desired-state messages to one agent's repository and model slot."""

    def __init__(
        self,
        agent_id: str,
        site: str,
        repository: ModelRepository,
        models: ModelTarget,
        token: str | None,
        trusted_keys: dict[str, Any],
        report: Callable[[dict[str, Any]], None],
        keep: int = 3,
        *,
        gateway_url: str | None = None,
        gateway_keys: TrustedKeys | None = None,
        sequence_file: Path | None = None,
        max_bytes: int = 256 * 1024 * 1024,
        http_timeout_s: float = 60.0,
        retry_base_s: float = 0.5,
        retry_cap_s: float = 30.0,
        ssl_ca_file: str | None = None,
    ) -> None:
        self.agent_id = agent_id
        self.site = site
        self.repository = repository
        self.models = models
        self.token = token
        self.trusted_keys = trusted_keys
        self.gateway_origin = origin(gateway_url) if gateway_url else None
        self.gateway_keys = gateway_keys or {}
        self.sequences = Sequences(sequence_file)
        #: Desired-state messages refused before they were applied (counted).
        self.refused_messages = 0
        self.keep = max(1, keep)
        self.max_bytes = max_bytes
        self._report_cb = report
        #: The configuration twin's hook: every authentic, current document (a retained
        #: redelivery too, so a restarted agent takes its config back).
        self.on_config: Callable[[Desired], None] = lambda desired: None
        self._timeout = aiohttp.ClientTimeout(total=http_timeout_s, sock_connect=5.0)
        self._retry = (retry_base_s, retry_cap_s)
        self._ssl_ca_file = ssl_ca_file
        self._session: aiohttp.ClientSession | None = None
        self._desired: Desired | None = None
        self._generation = 0
        self._waiters: list[tuple[int, asyncio.Future[dict[str, Any]]]] = []
        self._wake = asyncio.Event()
        self._admitting = asyncio.Lock()
        self._worker: asyncio.Task[None] | None = None
        self._refused: dict[tuple[str, int, str | None], str] = {}
        self._fetched_sha: dict[tuple[str, int], str] = {}
        #: The heartbeat ``update`` field.
        self.state: dict[str, Any] = UpdateState().as_dict()
        self.attempts = 0

    # -- public ----------------------------------------------------------------------

    async def handle_desired(self, payload: bytes) -> dict[str, Any]:
        """Apply a desired-state message; returns the update state after the first attempt
        (retries of transient failures continue in the background)."""
        if not payload:
            # A cleared retained message: the gateway forgot this agent, keep what runs.
            return dict(self.state)
        # One message at a time through check -> persist -> hand over, so the newest
        # accepted document is always the one the worker applies.
        async with self._admitting:
            try:
                admitted = self._admit(payload)
            except EdgecloudError as exc:
                self.refused_messages += 1
                reason = f"{exc.reason}: {exc.message}"
                log.warning("refused desired state: %s", reason)
                self._report(UpdateState(), UpdatePhase.FAILED, f"refused desired state: {reason}")
                return dict(self.state)
            desired, snapshot = admitted
            self._config(desired)
            loop = asyncio.get_running_loop()
            if snapshot is None:
                # The retained copy of the document accepted last. Already in hand: nothing
                # to do. Not in hand (this process started after accepting it, e.g. it was
                # killed mid-swap): apply it now; applying is idempotent (a model already
                # on the wanted version is left alone), and without this a crash between
                # accepting and applying would leave the agent off its desired state until
                # the gateway happened to sign a new document.
                # Of the two retained documents (agent and site) only the newest counts.
                held = self._desired
                if (
                    held is not None and held.sequence == desired.sequence
                ) or desired.sequence < self.sequences.newest():
                    return dict(self.state)
            else:
                try:
                    await loop.run_in_executor(None, self.sequences.save, snapshot)
                except OSError as exc:
                    # The document is authentic and newest: act on it; only a replay after
                    # a restart could slip through until the next successful write.
                    log.error("cannot persist the desired-state sequence: %s", exc)
            self._desired = desired
            self._generation += 1
            fut: asyncio.Future[dict[str, Any]] = loop.create_future()
            self._waiters.append((self._generation, fut))
            self._wake.set()
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._run(), name=f"updater-{self.agent_id}")
        return await asyncio.shield(fut)

    def _config(self, desired: Desired) -> None:
        try:
            self.on_config(desired)
        except Exception:  # a broken twin must not stop model updates
            log.exception("config twin failed")

    def _admit(self, payload: bytes) -> tuple[Desired, tuple[int, str] | None]:
        """Verify signature, target and freshness; no snapshot for a redelivered duplicate."""
        if not self.gateway_keys:
            raise ConfigError(
                "no gateway key configured (--gateway-key): desired state cannot be authenticated"
            )
        desired = verify_desired(payload, self.gateway_keys)
        mine = self.agent_id if desired.target_kind == "agent" else self.site
        if desired.target != mine:
            raise PermissionDenied(
                f"desired state for {desired.target_kind} {desired.target!r} is not for "
                f"this agent ({self.agent_id!r}, site {self.site!r})"
            )
        target = f"{desired.target_kind}:{desired.target}"
        digest = hashlib.sha256(payload).hexdigest()
        last, last_digest = self.sequences.seen(target)
        if desired.sequence == last and last_digest == digest:
            return desired, None  # the broker redelivered the retained message
        if desired.sequence <= last:
            raise InvalidInput(
                f"stale desired state: sequence {desired.sequence} is not newer than "
                f"{last}, the last accepted for {target} (a replayed message)"
            )
        return desired, self.sequences.accept(target, desired.sequence, digest)

    async def close(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        if self._session is not None:
            await self._session.close()
        for _, fut in self._waiters:
            if not fut.done():
                fut.cancel()

    # -- worker ----------------------------------------------------------------------

    async def _run(self) -> None:
        delays: Iterator[float] | None = None
        while True:
            await self._wake.wait()
            self._wake.clear()
            generation, desired = self._generation, self._desired
            if desired is None:
                continue
            try:
                for name, wanted in sorted(desired.models.items()):
                    await self._apply(desired.rollout_id, name, wanted)
                delays = None
            except _Retry as exc:
                delays = delays or backoff_delays(*self._retry)
                delay = max(0.05, next(delays))
                self._settle(generation)
                log.warning("update deferred (%s); retrying in %.1f s", exc, delay)
                # Not wait_for: on 3.11 it can swallow a cancel racing the event.
                try:
                    async with asyncio.timeout(delay):
                        await self._wake.wait()
                except TimeoutError:
                    self._wake.set()
                continue
            self._settle(generation)

    def _settle(self, generation: int) -> None:
        settled = [fut for gen, fut in self._waiters if gen <= generation]
        self._waiters = [(gen, fut) for gen, fut in self._waiters if gen > generation]
        for fut in settled:
            if not fut.done():
                fut.set_result(dict(self.state))

    async def _remove(self, rid: str | None, name: str, w: WantedModel) -> None:
        job = UpdateState(rollout_id=rid, model=name, version=w.version)
        if self.models.serving(name) is None:
            return
        try:
            await self.models.remove(name)
        except EdgecloudError as exc:
            reason = f"{exc.reason}: {exc.message}"
            self._report(job, UpdatePhase.FAILED, reason)
            log.error("cannot remove %s: %s", name, reason)
            return
        self._report(job, UpdatePhase.OK)

    async def _rebind(self, job: UpdateState, name: str, w: WantedModel) -> None:
        try:
            await self.models.swap(name, w.version, w.topics)
        except EdgecloudError as exc:
            reason = f"{exc.reason}: {exc.message}"
            self._report(job, UpdatePhase.FAILED, reason)
            log.error("cannot bind %s to %s: %s", name, w.topics, reason)
            return
        self._report(job, UpdatePhase.OK)

    async def _apply(self, rid: str | None, name: str, w: WantedModel) -> None:
        if w.state == "absent":
            await self._remove(rid, name, w)
            return
        job = UpdateState(rollout_id=rid, model=name, version=w.version)
        active = self.models.serving(name)
        if active == w.version:
            if w.topics is not None and w.topics != self.models.topics_of(name):
                await self._rebind(job, name, w)  # moved to other topics, same version
                return
            if (self.state["model"], self.state["version"]) != (name, w.version):
                self._report(job, UpdatePhase.OK)
            return
        if active is not None and w.version < active and not w.rollback:
            reason = (
                f"downgrade refused: {name} version {w.version} is older than the active "
                f"{active} and the desired state does not mark it as a rollback"
            )
            self._report(job, UpdatePhase.FAILED, reason)
            log.error("refused %s:%d: %s", name, w.version, reason)
            return
        refused = self._refused.get((name, w.version, w.sha256))
        if refused is not None:
            self._report(job, UpdatePhase.FAILED, refused)
            return
        self.attempts += 1
        loop = asyncio.get_running_loop()
        try:
            if w.version in await loop.run_in_executor(None, self.repository.versions, name):
                await self._check_local(job, w)
            else:
                await self._fetch_and_install(job, w)
            self._report(job, UpdatePhase.SWAPPING)
            await self.models.swap(name, w.version, w.topics)
            await loop.run_in_executor(None, self._after_swap, name, w.version)
        except EdgecloudError as exc:
            reason = f"{exc.reason}: {exc.message}"
            if not isinstance(exc, _NOT_CACHED):
                self._refused[(name, w.version, w.sha256)] = reason
            self._report(job, UpdatePhase.FAILED, reason)
            log.error("refused %s:%d: %s", name, w.version, reason)
            return
        except _Retry as exc:
            self._report(job, UpdatePhase.FAILED, f"unavailable: {exc} (retrying)")
            raise
        self._report(job, UpdatePhase.OK)

    def _after_swap(self, name: str, version: int) -> None:
        self.repository.activate(name, version)
        removed = self.repository.prune(name, self.keep)
        if removed:
            log.info("pruned %s versions %s", name, removed)

    async def _check_local(self, job: UpdateState, w: WantedModel) -> None:
        """Instant rollback path: the version is already installed and only re-verified."""
        known = self._fetched_sha.get((job.model, w.version))
        if w.sha256 is not None and known is not None and known != w.sha256:
            raise HashMismatch(
                f"desired sha256 of {job.model}:{w.version} differs from the installed bundle"
            )
        self._report(job, UpdatePhase.VERIFYING)
        await asyncio.get_running_loop().run_in_executor(
            None, self.repository.verify, job.model, w.version
        )

    async def _fetch_and_install(self, job: UpdateState, w: WantedModel) -> None:
        ref = f"{job.model}:{w.version}"
        if w.url is None or w.sha256 is None:
            raise InvalidInput(
                f"{ref} is not installed locally and the desired state has no download url/sha256"
            )
        self._check_origin(w.url)
        self._report(job, UpdatePhase.DOWNLOADING)
        tmp = Path(tempfile.mkdtemp(prefix=".download-", dir=self.repository.root))
        loop = asyncio.get_running_loop()
        try:
            file = tmp / f"{job.model}-{w.version}.bundle"
            digest = await self._download(w.url, file)
            if digest != w.sha256:
                raise HashMismatch(
                    f"downloaded bundle sha256 {digest[:12]}... != desired {w.sha256[:12]}..."
                )
            self._report(job, UpdatePhase.VERIFYING)
            manifest = await loop.run_in_executor(
                None, self.repository.install, file, self.trusted_keys
            )
            if manifest.ref != ref:
                raise InvalidInput(f"bundle holds {manifest.ref}, desired state asked for {ref}")
            self._fetched_sha[(job.model, w.version)] = digest
        finally:
            await loop.run_in_executor(None, shutil.rmtree, tmp, True)

    def _check_origin(self, url: str) -> None:
        """The credential goes to the configured gateway only, never to a message's URL."""
        if self.gateway_origin is None:
            raise ConfigError(
                "no --gateway-url configured: bundles are downloaded only from the "
                "configured gateway"
            )
        found = origin(url)
        if found != self.gateway_origin:
            raise PermissionDenied(
                f"download URL origin {_show(found)} is not the configured gateway "
                f"{_show(self.gateway_origin)}; the agent credential is sent only there"
            )

    async def _download(self, url: str, dest: Path) -> str:
        self._check_origin(url)
        if self._session is None:
            ca = self._ssl_ca_file
            ctx = ssl.create_default_context(cafile=ca) if ca else True
            self._session = aiohttp.ClientSession(
                timeout=self._timeout, connector=aiohttp.TCPConnector(ssl=ctx)
            )
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        digest = hashlib.sha256()
        loop = asyncio.get_running_loop()
        try:
            # No redirects: a 30x would carry the request (and credential) elsewhere.
            async with self._session.get(url, headers=headers, allow_redirects=False) as resp:
                # 404 too: a gateway restored from backup or still receiving the push.
                if resp.status >= 500 or resp.status in (404, 429):
                    raise _Retry(f"gateway answered {resp.status}")
                if resp.status != 200:
                    error = _HTTP_ERRORS.get(resp.status, InvalidInput)
                    raise error(
                        f"download refused by the gateway: HTTP {resp.status} "
                        f"{(await resp.text())[:200]}"
                    )
                size = 0
                with open(dest, "wb") as fh:  # noqa: ASYNC230 - writes go to the executor
                    async for chunk in resp.content.iter_chunked(1 << 20):
                        size += len(chunk)
                        if size > self.max_bytes:
                            raise InvalidInput(f"bundle larger than {self.max_bytes} bytes")
                        digest.update(chunk)
                        await loop.run_in_executor(None, fh.write, chunk)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise _Retry(f"download of {url} failed: {type(exc).__name__}: {exc}") from None
        return digest.hexdigest()

    def _report(self, job: UpdateState, phase: UpdatePhase, reason: str | None = None) -> None:
        self.state = job.model_copy(update={"state": phase, "reason": reason}).as_dict()
        try:
            self._report_cb(dict(self.state))
        except Exception:  # a broken reporter must not stop updates
            log.exception("update report callback failed")
