"""The served models: a Triton-layout repository loaded into backends, several versions at once.

Layout: ``<root>/<name>/<version>/model.onnx`` (optionally ``manifest.json`` beside it and
``<root>/<name>/config.pbtxt``). Loading a version builds its backend in the executor, warms
it, and only then makes it visible; unloading hides it first and drains its batcher.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from models.backends import Backend, BackendOptions, load_backend
from models.errors import EdgecloudError, InvalidInput, NotFound, Unavailable
from offload.loaded_model import LoadedModel
from offload.metrics import ServerMetrics
from offload.model_config import (
    ServingConfig,
    ServingDefaults,
    batchable,
    read_config_pbtxt,
    read_manifest,
    serving_config,
)

log = logging.getLogger(__name__)

MODEL_FILE = "model.onnx"


@dataclass(frozen=True)
class IndexEntry:
    name: str
    version: str
    state: str
    reason: str


class ModelStore:
    """Name -> version -> :class:`LoadedModel`, backed by a repository directory."""

    def __init__(
        self,
        root: Path,
        *,
        executor: Executor,
        metrics: ServerMetrics,
        backend_kind: str = "auto",
        options: BackendOptions | None = None,
        defaults: ServingDefaults | None = None,
        instances: int = 1,
    ) -> None:
        self.root = Path(root)
        self._executor = executor
        self._metrics = metrics
        self._kind = backend_kind
        self._options = options or BackendOptions()
        self._defaults = defaults or ServingDefaults()
        self._instances = instances
        self._models: dict[str, dict[int, LoadedModel]] = {}
        self._newest: dict[str, LoadedModel] = {}
        self._failed: dict[tuple[str, int], str] = {}
        self._lock = asyncio.Lock()

    def get(self, name: str, version: str = "") -> LoadedModel:
        """The ready version ``version`` ('' = newest ready) of ``name``."""
        if not version:
            model = self._newest.get(name)
            if model is None:
                raise NotFound(f"model {name!r} is not loaded (ready: {sorted(self._models)})")
            return model
        versions = self._models.get(name)
        if versions is None:
            raise NotFound(f"model {name!r} is not loaded (ready: {sorted(self._models)})")
        try:
            model = versions.get(int(version))
        except ValueError:
            raise InvalidInput(f"model version must be an integer, got {version!r}") from None
        if model is None:
            raise NotFound(
                f"version {version} of {name!r} is not ready (ready: {sorted(versions)})"
            )
        return model

    def ready_versions(self, name: str) -> list[int]:
        return sorted(self._models.get(name, {}))

    def loaded(self) -> list[LoadedModel]:
        return [m for versions in self._models.values() for m in versions.values()]

    def _disk_versions(self, name: str) -> list[int]:
        model_dir = self.root / name
        if not model_dir.is_dir():
            return []
        return sorted(
            int(p.name)
            for p in model_dir.iterdir()
            if p.name.isdigit() and (p / MODEL_FILE).is_file()
        )

    def index(self) -> list[IndexEntry]:
        names = set(self._models)
        if self.root.is_dir():
            names |= {p.name for p in self.root.iterdir() if p.is_dir()}
        out: list[IndexEntry] = []
        for name in sorted(names):
            ready = self._models.get(name, {})
            for v in sorted(set(self._disk_versions(name)) | set(ready)):
                if v in ready:
                    out.append(IndexEntry(name, str(v), "READY", ""))
                else:
                    out.append(
                        IndexEntry(
                            name, str(v), "UNAVAILABLE", self._failed.get((name, v), "unloaded")
                        )
                    )
        return out

    async def load_all(self) -> None:
        if not self.root.is_dir():
            log.warning("repository %s does not exist yet; serving no models", self.root)
            return
        for model_dir in sorted(p for p in self.root.iterdir() if p.is_dir()):
            try:
                await self.load(model_dir.name)
            except EdgecloudError as exc:
                log.error("cannot load %s: %s", model_dir.name, exc.message)

    async def load(self, name: str, version: int | None = None) -> list[int]:
        """(Re)load ``name`` from disk: new versions become ready, vanished ones are unloaded."""
        async with self._lock:
            on_disk = self._disk_versions(name)
            if not on_disk:
                raise NotFound(f"no {name}/<version>/{MODEL_FILE} under the repository")
            wanted = on_disk if version is None else [version]
            if version is not None and version not in on_disk:
                raise NotFound(f"{name}/{version}/{MODEL_FILE} is not in the repository")
            pbtxt = read_config_pbtxt(self.root / name)
            errors: list[str] = []
            for v in wanted:
                if v in self._models.get(name, {}):
                    continue
                try:
                    model = await self._load_version(name, v, pbtxt)
                except EdgecloudError as exc:
                    self._failed[(name, v)] = exc.message
                    errors.append(f"{v}: {exc.message}")
                    continue
                self._failed.pop((name, v), None)
                self._models.setdefault(name, {})[v] = model
                self._refresh(name)
                log.info("loaded %s:%s (%s)", name, v, model.backend.description)
            if version is None:
                for v in [v for v in self._models.get(name, {}) if v not in on_disk]:
                    await self._unload_locked(name, v)
            if errors and not self._models.get(name):
                raise Unavailable(f"could not load {name}: " + "; ".join(errors))
            return self.ready_versions(name)

    async def _load_version(self, name: str, version: int, pbtxt: object) -> LoadedModel:
        loop = asyncio.get_running_loop()
        vdir = self.root / name / str(version)

        def build() -> tuple[Backend, ServingConfig]:
            manifest = read_manifest(vdir)
            backend = load_backend(vdir / MODEL_FILE, self._kind, self._options)
            try:
                config = serving_config(
                    pbtxt,  # type: ignore[arg-type]
                    manifest,
                    batchable(backend.inputs, backend.outputs),
                    self._defaults,
                )
                # Our own zero feed (not Backend.warmup): a fixed first axis must keep its size.
                backend.infer(
                    {
                        spec.name: np.zeros(
                            tuple(1 if d < 0 else d for d in spec.shape), spec.numpy_dtype
                        )
                        for spec in backend.inputs
                    }
                )
            except Exception:
                backend.close()
                raise
            return backend, config

        try:
            backend, config = await loop.run_in_executor(self._executor, build)
        except EdgecloudError:
            raise
        except Exception as exc:
            raise Unavailable(f"cannot load {name}:{version}: {exc}") from exc
        model = LoadedModel(
            name,
            version,
            backend,
            config,
            self._executor,
            self._metrics.for_model(name, version),
            self._instances,
        )
        model.batcher.start()
        return model

    def _refresh(self, name: str) -> None:
        versions = self._models.get(name)
        if versions:
            self._newest[name] = versions[max(versions)]
        else:
            self._models.pop(name, None)
            self._newest.pop(name, None)
        self._metrics.models_ready.set(sum(len(v) for v in self._models.values()))

    async def unload(self, name: str, version: int | None = None) -> None:
        async with self._lock:
            versions = self._models.get(name)
            if not versions or (version is not None and version not in versions):
                raise NotFound(f"{name}{'' if version is None else f':{version}'} is not loaded")
            for v in [version] if version is not None else list(versions):
                await self._unload_locked(name, v)

    async def _unload_locked(self, name: str, version: int) -> None:
        model = self._models[name].pop(version)
        self._refresh(name)
        await model.batcher.close()
        model.backend.close()
        self._metrics.forget(name, version)
        log.info("unloaded %s:%s", name, version)

    async def close(self) -> None:
        async with self._lock:
            for name in list(self._models):
                for v in list(self._models.get(name, {})):
                    await self._unload_locked(name, v)
