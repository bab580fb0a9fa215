"""The agent's model slot: the active version of one model and zero-downtime swaps.

``swap`` loads and warms the new version in the inference executor
(:func:`models.serving.load`), then replaces the active version in one assignment
(:class:`models.versions.Versions`). Batches already running hold a lease on the old
version and finish on it; the old backend is closed when its last lease is released
(:class:`models.serving.Served`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import Executor
from pathlib import Path

from models import serving
from models.backends.base import Backend, BackendOptions
from models.errors import BackendError, NotFound
from models.manifest import Manifest
from models.servable import check_servable
from models.serving import Served
from models.versions import Versions

log = logging.getLogger(__name__)


class Loaded(Served):
    """A version the agent serves: a :class:`~models.serving.Served` that always has its
    manifest (the windows it reads and the outputs it writes come from it)."""

    __slots__ = ()
    manifest: Manifest

    @property
    def version(self) -> int:
        return self.manifest.version


def _check_compatible(manifest: Manifest, backend: Backend) -> None:
    want = {s.name: s for s in manifest.inputs}
    for spec in backend.inputs:
        m = want.get(spec.name)
        if m is None or len(m.shape) != len(spec.shape):
            raise BackendError(f"graph input {spec.name!r} does not match manifest {manifest.ref}")
    check_servable(manifest)  # the one rule of what an agent can feed (models.servable)


class ModelSlot:
    """``agent.models``: what the agent serves now and how it changes version.

    The swap rules (load and warm before unloading, one-assignment switch, a failed load
    keeps the serving version, leases keep a replaced version alive) are those of
    :class:`models.versions.Versions` with ``keep="active"``; this class adds where the
    versions come from (the agent's repository) and the agent's change callback.
    """

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
        self._kind = kind
        self._options = options or BackendOptions()
        self._warmup = warmup_batches
        self._versions: Versions[Loaded] = Versions(
            self._load_sync, executor, keep="active", retire=Served.retire
        )
        self._name: str | None = None  # the model the slot serves (one at a time)
        # Whole switches in order: ``on_change`` sees them as they happened, and a switch
        # to another model unloads the previous one before the next switch starts.
        self._lock = asyncio.Lock()
        self._on_change = on_change

    @property
    def history(self) -> list[dict[str, object]]:
        """The last 50 loads, swaps and failures (the status document's ``model_history``)."""
        return self._versions.history

    @property
    def repository(self):
        from models.repository import ModelRepository

        return ModelRepository(self.root, check=False)

    @property
    def active(self) -> tuple[Manifest, Backend]:
        cur = self.loaded
        if cur is None:
            raise NotFound("no model loaded")
        return cur.manifest, cur.backend

    @property
    def loaded(self) -> Loaded | None:
        return None if self._name is None else self._versions.active(self._name)

    def lease(self) -> Loaded:
        """Pin the active version for one batch; call ``release()`` when done."""
        cur = self.loaded
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
            new = await self._versions.load(name, version, event=event)
            previous, self._name = self._name, name
            if previous is not None and previous != name:
                await self._versions.unload(previous)  # a slot holds one model
            log.info("model %s active (%s)", new.manifest.ref, new.backend.description)
            if self._on_change is not None:
                self._on_change(new.manifest, event)
            return new.manifest

    def close(self) -> None:
        for loaded in self._versions.loaded():
            loaded.retire()
