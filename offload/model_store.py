"""The served models: a Triton-layout repository loaded into backends, several versions at once.

Layout: ``<root>/<name>/<version>/model.onnx`` (optionally ``manifest.json`` beside it and
``<root>/<name>/config.pbtxt``). Loading a version builds its backend in the executor, warms
it, and only then makes it visible; unloading hides it first and drains its batcher
(the rules of :class:`models.versions.Versions`, ``keep="all"``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path

from models import serving
from models.backends import BackendOptions
from models.errors import EdgecloudError, InvalidInput, NotFound, Unavailable
from models.versions import Versions
from offload.loaded_model import LoadedModel
from offload.metrics import ServerMetrics
from offload.model_config import (
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
    """Name -> version -> :class:`LoadedModel`, backed by a repository directory.

    Which versions are loaded and which one a request without a version gets is kept by
    :class:`models.versions.Versions` (``keep="all"``: every loaded version stays ready,
    the newest serves); this class maps the repository onto it and keeps the metrics.
    """

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
        self._versions: Versions[LoadedModel] = Versions(
            self._build,
            executor,
            keep="all",
            retire=self._retire,
            start=lambda model: model.batcher.start(),
            error=Unavailable,
        )

    def get(self, name: str, version: str = "") -> LoadedModel:
        """The ready version ``version`` ('' = newest ready) of ``name`` (every request:
        dictionary lookups only, the lists in the messages are built on the error path)."""
        newest = self._versions.active(name)
        if newest is None:
            raise NotFound(f"model {name!r} is not loaded (ready: {self._versions.names()})")
        if not version:
            return newest
        try:
            number = int(version)
        except ValueError:
            raise InvalidInput(f"model version must be an integer, got {version!r}") from None
        model = self._versions.get(name, number)
        if model is None:
            raise NotFound(
                f"version {version} of {name!r} is not ready "
                f"(ready: {self._versions.versions(name)})"
            )
        return model

    def ready_versions(self, name: str) -> list[int]:
        return self._versions.versions(name)

    def loaded(self) -> list[LoadedModel]:
        return self._versions.loaded()

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
        names = set(self._versions.names())
        if self.root.is_dir():
            names |= {p.name for p in self.root.iterdir() if p.is_dir()}
        out: list[IndexEntry] = []
        for name in sorted(names):
            ready = set(self._versions.versions(name))
            for v in sorted(set(self._disk_versions(name)) | ready):
                if v in ready:
                    out.append(IndexEntry(name, str(v), "READY", ""))
                else:
                    reason = self._versions.failure(name, v) or "unloaded"
                    out.append(IndexEntry(name, str(v), "UNAVAILABLE", reason))
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
        on_disk = self._disk_versions(name)
        if not on_disk:
            raise NotFound(f"no {name}/<version>/{MODEL_FILE} under the repository")
        wanted = on_disk if version is None else [version]
        if version is not None and version not in on_disk:
            raise NotFound(f"{name}/{version}/{MODEL_FILE} is not in the repository")
        # A malformed config.pbtxt refuses the whole load with its own error (ConfigError),
        # before any version is built; each build reads it again in its thread.
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, read_config_pbtxt, self.root / name)
        errors: list[str] = []
        for v in wanted:
            if self._versions.get(name, v) is not None:
                continue
            try:
                # reload=False: a concurrent load of the same version built it already
                model = await self._versions.load(name, v, reload=False)
            except EdgecloudError as exc:
                errors.append(f"{v}: {exc.message}")
                continue
            self._ready_changed()
            log.info("loaded %s:%s (%s)", name, v, model.backend.description)
        if version is None:
            for v in self._versions.versions(name):
                if v not in on_disk:
                    with contextlib.suppress(NotFound):  # a concurrent unload was first
                        await self.unload(name, v)
        if errors and not self._versions.versions(name):
            raise Unavailable(f"could not load {name}: " + "; ".join(errors))
        return self.ready_versions(name)

    def _build(self, name: str, version: int | None) -> LoadedModel:
        """Load one version from the repository (blocking: runs in the executor)."""
        if version is None:  # the store always names the version it loads
            raise InvalidInput(f"no version of {name} given")
        vdir = self.root / name / str(version)
        pbtxt = read_config_pbtxt(self.root / name)
        manifest = read_manifest(vdir)
        served = serving.load(vdir / MODEL_FILE, self._kind, self._options, manifest=manifest)
        backend = served.backend
        try:
            config = serving_config(
                pbtxt,
                manifest,
                batchable(backend.inputs, backend.outputs),
                self._defaults,
            )
            return LoadedModel(
                name,
                version,
                served,
                config,
                self._executor,
                self._metrics.for_model(name, version),
                self._instances,
            )
        except Exception:
            served.retire()
            raise

    async def _retire(self, model: LoadedModel) -> None:
        await model.batcher.close()
        model.served.retire()  # no batch is running on it any more
        self._metrics.forget(model.name, model.version)

    def _ready_changed(self) -> None:
        self._metrics.models_ready.set(len(self._versions.loaded()))

    async def unload(self, name: str, version: int | None = None) -> None:
        for v in await self._versions.unload(name, version):
            log.info("unloaded %s:%s", name, v)
        self._ready_changed()

    async def close(self) -> None:
        await self._versions.close()
        self._ready_changed()
