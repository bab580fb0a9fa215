"""The edge model updater: desired state in, verified zero-downtime swap out.

For each model in ``fleet/{agent}/desired`` (``offload.desired.Desired``) it
downloads the bundle with the agent token, unless the version is still installed
(instant rollback); checks its sha256; installs it (signature, hashes, graph, test
vectors); swaps load-before-unload via ``models.swap``; activates; prunes to ``keep``
versions; and reports each step via ``report`` (the heartbeat ``update`` field).
Bad input is refused with a reason while the current version keeps serving; network
trouble is retried with backoff until it works or a newer desired state arrives.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import shutil
import ssl
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

import aiohttp

from models.errors import (
    EdgecloudError,
    HashMismatch,
    InvalidInput,
    PermissionDenied,
    Unauthenticated,
)
from models.manifest import Manifest
from models.repository import ModelRepository
from offload.desired import Desired, UpdatePhase, UpdateState, WantedModel, parse_desired
from offload.mqtt import backoff_delays

log = logging.getLogger(__name__)

_HTTP_ERRORS: dict[int, type[EdgecloudError]] = {401: Unauthenticated, 403: PermissionDenied}
#: Not remembered as refused (a token may be rotated), unlike bad bytes that stay bad.
_NOT_CACHED: tuple[type[EdgecloudError], ...] = (Unauthenticated, PermissionDenied)


class ModelTarget(Protocol):
    """What the updater needs from the agent (``EdgeAgent`` implements it)."""

    def serving(self, name: str) -> int | None:
        """The active version of ``name``, or None when it is not served."""

    async def swap(self, name: str, version: int, topics: str | None = None) -> Manifest:
        """Serve ``name:version`` (load-before-unload; adds the model if new)."""

    async def remove(self, name: str) -> None:
        """Stop serving ``name``."""


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
        self.keep = max(1, keep)
        self.max_bytes = max_bytes
        self._report_cb = report
        self._timeout = aiohttp.ClientTimeout(total=http_timeout_s, sock_connect=5.0)
        self._retry = (retry_base_s, retry_cap_s)
        self._ssl_ca_file = ssl_ca_file
        self._session: aiohttp.ClientSession | None = None
        self._desired: Desired | None = None
        self._generation = 0
        self._waiters: list[tuple[int, asyncio.Future[dict[str, Any]]]] = []
        self._wake = asyncio.Event()
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
        try:
            desired = parse_desired(payload)
        except InvalidInput as exc:
            self._report(UpdateState(), UpdatePhase.FAILED, f"{exc.reason}: {exc.message}")
            return dict(self.state)
        self._desired = desired
        self._generation += 1
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiters.append((self._generation, fut))
        self._wake.set()
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._run(), name=f"updater-{self.agent_id}")
        return await asyncio.shield(fut)

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

    def _serving(self, name: str) -> int | None:
        return self.models.serving(name)

    async def _apply(self, rid: str | None, name: str, w: WantedModel) -> None:
        job = UpdateState(rollout_id=rid, model=name, version=w.version)
        if self._serving(name) == w.version:
            if (self.state["model"], self.state["version"]) != (name, w.version):
                self._report(job, UpdatePhase.OK)
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
            await self.models.swap(name, w.version, getattr(w, "topics", None))
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

    async def _download(self, url: str, dest: Path) -> str:
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
            async with self._session.get(url, headers=headers) as resp:
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
