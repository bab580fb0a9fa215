"""The agent's model slot: the active version of one model and zero-downtime swaps.

``swap`` loads and warms the new version in the inference executor
(:func:`models.serving.load`), then replaces the active version in one assignment.
Batches already running hold a lease on the old version and finish on it; the old backend
is closed when its last lease is released (:class:`models.serving.Served`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import Executor
from pathlib import Path

from models import serving
from models.backends.base import Backend, BackendOptions
from models.errors import BackendError, EdgecloudError, NotFound
from models.manifest import Manifest
from models.servable import check_servable
from models.serving import Served

log = logging.getLogger(__name__)


class Loaded(Served):
    """A version the agent serves: a :class:`~models.serving.Served` that always has its
    manifest (the windows it reads and the outputs it writes come from it)."""

    __slots__ = ()
    manifest: Manifest


def _check_compatible(manifest: Manifest, backend: Backend) -> None:
    want = {s.name: s for s in manifest.inputs}
    for spec in backend.inputs:
        m = want.get(spec.name)
        if m is None or len(m.shape) != len(spec.shape):
            raise BackendError(f"graph input {spec.name!r} does not match manifest {manifest.ref}")
    check_servable(manifest)  # the one rule of what an agent can feed (models.servable)


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
        manifest, path = self._resolve(name, version)
        served = serving.load(
            path,
            self._kind,
            self._options,
            manifest=manifest,
            check=lambda backend: _check_compatible(manifest, backend),
            warm_sizes=[b for b in self._warmup if b <= manifest.max_batch_size] or [1],
        )
        return Loaded(served.backend, manifest, served.warm_times)

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
