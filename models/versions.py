"""The versions registry: which versions of each model are loaded, and which one serves.

One class for the agent's model slot (``edge_agent/model/slot.py``) and the cloud tier's
store (``offload/model_store.py``); they differ only in the ``keep`` rule:

- ``keep="active"`` (the agent): a model has one loaded version. Loading another one
  replaces it: the new version is built and warmed first, becomes active in one
  assignment, and only then is the old one retired.
- ``keep="all"`` (the cloud tier, as Triton): every loaded version stays ready until it
  is unloaded, and the newest ready version is the active one (the one a request without
  a version gets).

Rules both share:

- **Load before unload.** ``build`` (blocking: read, load, check, warm) runs in the
  executor, never on the event loop; nothing visible changes until it has returned.
- **Atomic switch.** Readers (``active``/``get``, on every request) see the old version
  or the new one, never a gap: the dictionaries are replaced or updated by single
  assignments on the event loop.
- **Retire after hiding.** A version leaves the tables first and is handed to ``retire``
  afterwards; with :class:`models.serving.Served` leases that keeps a version whose
  batches are still running alive until their last lease is released.
- **A failed load touches nothing that serves.** Errors from ``build`` (third-party ones
  mapped to ``error``) are recorded (``failure``, ``history``) and raised; a version that
  was built but fails ``start`` is retired again before the error is raised, and so is
  one whose load was cancelled while it was being built.
- **One change at a time per model.** Loads, unloads and rollbacks of one name are
  serialised by a per-name lock; different models load in parallel.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from typing import Generic, Literal, Protocol, TypeVar

from models.errors import BackendError, EdgecloudError, NotFound

__all__ = ["Keep", "Version", "Versions"]

Keep = Literal["active", "all"]
HISTORY = 50  # events kept per registry (the agent's status document shows them)


class Version(Protocol):
    """What the registry holds: anything that knows its version number."""

    @property
    def version(self) -> int: ...


V = TypeVar("V", bound=Version)


class Versions(Generic[V]):
    """Name -> version -> loaded ``V``, with one active version per name.

    ``build(name, version)`` loads one version (``version=None``: the caller's default,
    e.g. the repository's active one) and is blocking; ``start`` finishes it on the event
    loop before it becomes visible; ``retire`` takes a hidden version out of service
    (it may be a coroutine function, e.g. to drain a batcher first).
    """

    def __init__(
        self,
        build: Callable[[str, int | None], V],
        executor: Executor,
        *,
        keep: Keep,
        retire: Callable[[V], Awaitable[None] | None],
        start: Callable[[V], None] | None = None,
        error: type[EdgecloudError] = BackendError,
    ) -> None:
        self._build = build
        self._executor = executor
        self._keep = keep
        self._retire = retire
        self._start = start
        self._error = error
        self._loaded: dict[str, dict[int, V]] = {}
        self._active: dict[str, V] = {}
        # The versions each name served before the current one (for ``rollback``).
        self._before: dict[str, list[int]] = {}
        self._failed: dict[tuple[str, int | None], str] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._discarding: set[asyncio.Future[None]] = set()
        self.history: list[dict[str, object]] = []

    # -- reading (every request: plain dictionary lookups) ------------------------------

    def active(self, name: str) -> V | None:
        return self._active.get(name)

    def get(self, name: str, version: int) -> V | None:
        versions = self._loaded.get(name)
        return None if versions is None else versions.get(version)

    def versions(self, name: str) -> list[int]:
        """The loaded versions of ``name``, oldest first."""
        return sorted(self._loaded.get(name, {}))

    def names(self) -> list[str]:
        return sorted(self._loaded)

    def loaded(self) -> list[V]:
        return [v for versions in self._loaded.values() for v in versions.values()]

    def failure(self, name: str, version: int | None) -> str | None:
        """Why the last load of ``name:version`` failed (None once it has loaded)."""
        return self._failed.get((name, version))

    def previous(self, name: str) -> int | None:
        """The version that served ``name`` before the active one (what ``rollback`` restores)."""
        before = self._before.get(name)
        return before[-1] if before else None

    # -- changing ------------------------------------------------------------------------

    def _lock(self, name: str) -> asyncio.Lock:
        lock = self._locks.get(name)
        if lock is None:
            lock = self._locks[name] = asyncio.Lock()
        return lock

    async def load(
        self, name: str, version: int | None = None, *, event: str = "loaded", reload: bool = True
    ) -> V:
        """Build ``name:version`` in the executor, then make it visible (and, with
        ``keep="active"``, retire the version it replaces). ``reload=False`` returns the
        version as it is if it is already loaded (checked under the lock, so concurrent
        requests for one version build it once)."""
        async with self._lock(name):
            if not reload and version is not None:
                loaded = self._loaded.get(name, {}).get(version)
                if loaded is not None:
                    return loaded
            return await self._load_locked(name, version, event)

    async def _load_locked(self, name: str, version: int | None, event: str) -> V:
        loop = asyncio.get_running_loop()
        building = loop.run_in_executor(self._executor, self._build, name, version)
        try:
            try:
                # Shielded: a cancelled load cannot stop a build already running in a
                # thread, so the version it builds is retired when it arrives, not leaked.
                new = await asyncio.shield(building)
            except asyncio.CancelledError:
                building.add_done_callback(self._discard)
                raise
            if self._start is not None:
                try:
                    self._start(new)
                except BaseException:
                    await self._call_retire(new)  # built but never visible: unwind
                    raise
        except EdgecloudError as exc:
            self._record_failure(name, version, exc.message)
            raise
        except Exception as exc:  # third-party loader errors: map once
            mapped = self._error(f"cannot load {name}:{version}: {exc}")
            self._record_failure(name, version, mapped.message)
            raise mapped from exc
        self._failed.pop((name, version), None)
        self._failed.pop((name, new.version), None)
        old_active = self._active.get(name)
        current = self._loaded.get(name, {})
        if self._keep == "active":
            hidden = list(current.values())
            self._loaded[name] = {new.version: new}  # one assignment: the switch
        else:
            replaced = current.get(new.version)
            hidden = [replaced] if replaced is not None else []
            self._loaded.setdefault(name, {})[new.version] = new
        self._refresh(name, old_active)
        self._note(new.version, event)
        for old in hidden:
            await self._call_retire(old)
        return new

    async def unload(self, name: str, version: int | None = None) -> list[int]:
        """Hide ``name:version`` (every version if None), then retire it; returns the
        versions unloaded. Raises NotFound if nothing matches."""
        async with self._lock(name):
            current = self._loaded.get(name, {})
            if not current or (version is not None and version not in current):
                raise NotFound(f"{name}{'' if version is None else f':{version}'} is not loaded")
            gone = [version] if version is not None else sorted(current)
            await self._unload_locked(name, gone)
            return gone

    async def _unload_locked(self, name: str, gone: list[int]) -> None:
        old_active = self._active.get(name)
        current = self._loaded.get(name, {})
        hidden = [current[v] for v in gone if v in current]
        remaining = {v: m for v, m in current.items() if v not in gone}
        self._loaded[name] = remaining
        self._refresh(name, old_active)
        for old in hidden:
            await self._call_retire(old)

    async def rollback(self, name: str) -> V:
        """Serve the version that served before the active one again.

        ``keep="active"``: it is loaded (warmed) anew and swapped in like any load.
        ``keep="all"``: the newest version serves, so the versions newer than it are
        unloaded (after loading it again if it was unloaded meanwhile).
        """
        async with self._lock(name):
            target = self.previous(name)
            if target is None:
                raise NotFound(f"{name} has no earlier version to roll back to")
            if self._keep == "active":
                return await self._load_locked(name, target, "rolled back")
            restored = self._loaded.get(name, {}).get(target)
            if restored is None:
                restored = await self._load_locked(name, target, "loaded")
            await self._unload_locked(name, [v for v in self._loaded[name] if v > target])
            self._note(target, "rolled back")
            return restored

    async def close(self) -> None:
        """Unload everything (shutdown)."""
        for name in list(self._loaded):
            async with self._lock(name):
                await self._unload_locked(name, sorted(self._loaded.get(name, {})))

    # -- internals -------------------------------------------------------------------------

    def _refresh(self, name: str, old_active: V | None) -> None:
        """Recompute the active version of ``name`` after its loaded set changed."""
        current = self._loaded.get(name)
        if not current:
            self._loaded.pop(name, None)
            self._active.pop(name, None)
            self._before.pop(name, None)  # nothing serves: nothing to go back to
            return
        if self._keep == "active":
            new_active = next(iter(current.values()))
        else:
            new_active = current[max(current)]
        self._active[name] = new_active
        if old_active is None or old_active.version == new_active.version:
            return
        # A stack of what served before: going back to a version on it pops down to it
        # (a rollback, an unload of the newest), anything else pushes the one replaced.
        before = self._before.setdefault(name, [])
        if new_active.version in before:
            del before[before.index(new_active.version) :]
        else:
            before.append(old_active.version)
            del before[:-HISTORY]

    def _record_failure(self, name: str, version: int | None, message: str) -> None:
        self._failed[(name, version)] = message
        self._note(version, "failed")

    def _note(self, version: int | None, event: str) -> None:
        self.history.append({"version": version, "at": time.time(), "event": event})
        del self.history[:-HISTORY]

    def _discard(self, building: asyncio.Future[V]) -> None:
        """Retire a version whose load was cancelled while it was being built."""
        if building.cancelled() or building.exception() is not None:
            return
        result = self._retire(building.result())
        if inspect.isawaitable(result):
            task = asyncio.ensure_future(result)
            self._discarding.add(task)  # a reference until it is done
            task.add_done_callback(self._discarding.discard)

    async def _call_retire(self, old: V) -> None:
        result = self._retire(old)
        if inspect.isawaitable(result):
            await result
