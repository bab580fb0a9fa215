"""The agent's model slot: the active (manifest, backend) pair and zero-downtime swaps.

``swap`` loads and warms the new version in the inference executor, then replaces the
active pair in one assignment. Batches already running hold a :class:`Lease` on the old
pair and finish on it; the old backend is closed when its last lease is released.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor
from pathlib import Path

import numpy as np

from models.backends.base import Backend, BackendOptions
from models.errors import BackendError, EdgecloudError, NotFound
from models.manifest import Manifest
from models.servable import check_servable

log = logging.getLogger(__name__)


class Loaded:
    """One loaded version with a lease count (leases come from the loop and MQTT threads)."""

    __slots__ = ("_lock", "backend", "closing", "leases", "manifest", "warm_times")

    def __init__(
        self, manifest: Manifest, backend: Backend, warm_times: dict[int, float] | None = None
    ) -> None:
        self.manifest = manifest
        self.backend = backend
        # Seconds per batch size, timed once after warm-up: the routing policy's first
        # service-time estimates for this version (before any real batch has run).
        self.warm_times = warm_times or {}
        self.leases = 0
        self.closing = False
        self._lock = threading.Lock()

    def acquire(self) -> None:
        with self._lock:
            self.leases += 1

    def release(self) -> None:
        with self._lock:
            self.leases -= 1
            done = self.closing and self.leases <= 0
        if done:
            self.backend.close()

    def retire(self) -> None:
        """No new leases; close now if idle, else when the last lease is released."""
        with self._lock:
            self.closing = True
            done = self.leases <= 0
        if done:
            self.backend.close()


def _check_compatible(manifest: Manifest, backend: Backend) -> None:
    want = {s.name: s for s in manifest.inputs}
    for spec in backend.inputs:
        m = want.get(spec.name)
        if m is None or len(m.shape) != len(spec.shape):
            raise BackendError(f"graph input {spec.name!r} does not match manifest {manifest.ref}")
    check_servable(manifest)  # the one rule of what an agent can feed (models.servable)


def _time_batch(backend: Backend, n: int) -> float:
    feeds = {
        spec.name: np.zeros(
            tuple(n if i == 0 else max(d, 1) for i, d in enumerate(spec.shape)), spec.numpy_dtype
        )
        for spec in backend.inputs
    }
    t0 = time.perf_counter()
    backend.infer(feeds)
    return time.perf_counter() - t0


class ModelSlot:
    """``agent.models``: what the agent serves now and how it changes version."""

    def __init__(
        self,
        repository: Path,
        executor: Executor,
        *,
        kind: str = "auto",
        options: BackendOptions | None = None,
        warmup_batches: tuple[int, ...] = (1, 8, 64),
        on_change: Callable[[Manifest, str], None] | None = None,
    ) -> None:
        self.root = Path(repository)
        self._executor = executor
        self._kind = kind
        self._options = options or BackendOptions()
        self._warmup = warmup_batches
        self._current: Loaded | None = None
        self._lock = asyncio.Lock()
        self._on_change = on_change
        self.history: list[dict[str, object]] = []

    @property
    def repository(self):
        from models.repository import ModelRepository

        return ModelRepository(self.root, check=False)

    @property
    def active(self) -> tuple[Manifest, Backend]:
        cur = self._current
        if cur is None:
            raise NotFound("no model loaded")
        return cur.manifest, cur.backend

    @property
    def loaded(self) -> Loaded | None:
        return self._current

    def lease(self) -> Loaded:
        """Pin the active version for one batch; call ``release()`` when done."""
        cur = self._current
        if cur is None:
            raise NotFound("no model loaded")
        cur.acquire()
        return cur

    def _resolve(self, name: str, version: int | None) -> tuple[Manifest, Path]:
        repo = self.repository
        if version is None:
            version = repo.active(name)
            if version is None:
                versions = repo.versions(name)
                if not versions:
                    raise NotFound(f"model {name!r} not in repository {self.root}")
                version = max(versions)
        return repo.manifest(name, version), repo.model_path(name, version)

    def _load_sync(self, name: str, version: int | None) -> Loaded:
        from models.backends import load_backend

        manifest, path = self._resolve(name, version)
        backend = load_backend(path, self._kind, self._options)
        try:
            _check_compatible(manifest, backend)
            sizes = [b for b in self._warmup if b <= manifest.max_batch_size] or [1]
            backend.warmup(sizes)
            warm_times = {n: _time_batch(backend, n) for n in sizes}
        except BaseException:
            backend.close()
            raise
        return Loaded(manifest, backend, warm_times)

    async def load(self, name: str, version: int | None = None) -> Manifest:
        """Load the first model (or swap if one is loaded)."""
        return await self._switch(name, version, "loaded")

    async def swap(self, name: str, version: int) -> Manifest:
        """Load + warm ``name:version``, then switch atomically; keeps the old one on failure."""
        return await self._switch(name, version, "swapped")

    async def _switch(self, name: str, version: int | None, event: str) -> Manifest:
        async with self._lock:
            loop = asyncio.get_running_loop()
            try:
                new = await loop.run_in_executor(self._executor, self._load_sync, name, version)
            except EdgecloudError:
                self.history.append({"version": version, "at": time.time(), "event": "failed"})
                raise
            except Exception as exc:  # third-party loader errors: map once, keep the old model
                self.history.append({"version": version, "at": time.time(), "event": "failed"})
                raise BackendError(f"cannot load {name}:{version}: {exc}") from exc
            old, self._current = self._current, new
            if old is not None:
                old.retire()
            self.history.append(
                {"version": new.manifest.version, "at": time.time(), "event": event}
            )
            del self.history[:-50]
            log.info("model %s active (%s)", new.manifest.ref, new.backend.description)
            if self._on_change is not None:
                self._on_change(new.manifest, event)
            return new.manifest

    def close(self) -> None:
        if self._current is not None:
            self._current.retire()
