"""The on-disk versioned model repository, in Triton's layout.

    <root>/<name>/config.pbtxt         generated from the active version's manifest
    <root>/<name>/<version>/model.onnx + manifest.json + test_vectors.npz + signature.json
    <root>/<name>/active               the active version number (atomically replaced)
    <root>/<name>/state.json           activation stack (for rollback) and recent events
    <root>/<name>/.lock                flock(2) serialising writers across processes

A version directory becomes visible only by ``rename(2)`` of a complete, fsync'd staging
directory, so readers in any process never see a partial version, and a crash
mid-install leaves the previous state (plus a stale ``.staging-*`` dir, removed by the
next writer). Triton ignores the non-numeric entries.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from models import bundle
from models.errors import BundleError, ConfigError, Conflict, EdgecloudError, NotFound
from models.manifest import Manifest, validate_model_name
from models.signing import TrustedKeys
from models.triton import config_pbtxt

log = logging.getLogger(__name__)

_FILES = (bundle.MANIFEST, bundle.SIGNATURE, *bundle.PAYLOAD)
_EVENTS_KEPT = 50


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            # mkstemp creates 0600; a Triton container may run as another user.
            os.fchmod(fh.fileno(), 0o644)
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


class ModelRepository:
    """Versioned models under ``root``; safe for concurrent use by several processes."""

    def __init__(
        self, root: Path | str, *, trusted_keys: TrustedKeys | None = None, check: bool = True
    ) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.trusted_keys = trusted_keys
        #: (name, version) -> problem found by the integrity check on open.
        self.problems: dict[tuple[str, int], str] = {}
        if check:
            self.problems = self.check()

    # ---- reading -------------------------------------------------------------------
    def _model_dir(self, name: str) -> Path:
        try:
            return self.root / validate_model_name(name)
        except ValueError as exc:
            raise NotFound(str(exc)) from None

    def models(self) -> list[str]:
        return sorted(
            p.name
            for p in self.root.iterdir()
            if p.is_dir() and not p.name.startswith(".") and self.versions(p.name)
        )

    def versions(self, name: str) -> list[int]:
        model_dir = self._model_dir(name)
        if not model_dir.is_dir():
            return []
        return sorted(int(p.name) for p in model_dir.iterdir() if p.name.isdigit() and p.is_dir())

    def _version_dir(self, name: str, version: int) -> Path:
        path = self._model_dir(name) / str(int(version))
        if not path.is_dir():
            raise NotFound(f"model {name}:{version} is not in the repository")
        return path

    def manifest(self, name: str, version: int | None = None) -> Manifest:
        """The manifest of ``version`` (default: the active version)."""
        return bundle.read_manifest(self._version_dir(name, self._resolve(name, version)))

    def model_path(self, name: str, version: int | None = None) -> Path:
        """Path of the ONNX file of ``version`` (default: the active version)."""
        return self._version_dir(name, self._resolve(name, version)) / bundle.MODEL

    def version_dir(self, name: str, version: int) -> Path:
        return self._version_dir(name, version)

    def _resolve(self, name: str, version: int | None) -> int:
        if version is not None:
            return int(version)
        active = self.active(name)
        if active is None:
            raise NotFound(f"model {name} has no active version")
        return active

    def active(self, name: str) -> int | None:
        try:
            text = (self._model_dir(name) / "active").read_text().strip()
        except FileNotFoundError:
            return None
        return int(text) if text.isdigit() else None

    def history(self, name: str) -> list[dict[str, object]]:
        """Recent events: ``{"version", "at" (unix s), "event"}``, oldest first."""
        return list(self._state(name)["events"])

    def verify(self, name: str, version: int, *, run_vectors: bool = False) -> Manifest:
        """Re-check hashes and specs (and the signature when trusted keys are known)."""
        path = self._version_dir(name, version)
        if self.trusted_keys is not None:
            return bundle.verify_bundle_dir(path, self.trusted_keys, run_vectors=run_vectors)
        manifest = bundle.read_manifest(path)
        bundle.verify_hashes(path, manifest)
        bundle.check_specs(manifest, path / bundle.MODEL)
        return manifest

    def check(self) -> dict[tuple[str, int], str]:
        """Integrity check of every version; problems are logged and returned, not raised."""
        problems: dict[tuple[str, int], str] = {}
        for name in self.models():
            for version in self.versions(name):
                try:
                    self.verify(name, version)
                except EdgecloudError as exc:
                    problems[(name, version)] = exc.message
                    log.error("repository integrity: %s:%s: %s", name, version, exc.message)
        return problems

    # ---- writing -------------------------------------------------------------------
    @contextlib.contextmanager
    def _lock(self, name: str) -> Iterator[Path]:
        model_dir = self._model_dir(name)
        model_dir.mkdir(parents=True, exist_ok=True)
        with open(model_dir / ".lock", "a+b") as fh:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            try:
                # Staging dirs only exist while a writer holds this lock: any seen now
                # belong to a writer that crashed.
                for stale in model_dir.glob(".staging-*"):
                    shutil.rmtree(stale, ignore_errors=True)
                yield model_dir
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)

    def install(
        self,
        bundle_file_or_dir: Path | str,
        trusted_keys: TrustedKeys | None = None,
        *,
        check: Callable[[Manifest], None] | None = None,
    ) -> Manifest:
        """Verify and atomically add a version; the first version of a model becomes active.

        ``check`` (e.g. :func:`models.servable.check_servable`) runs on the verified
        manifest before anything is written. Installing the same bytes again is a no-op; a
        different bundle with an existing version number raises :class:`Conflict`.
        """
        keys = trusted_keys if trusted_keys is not None else self.trusted_keys
        if keys is None:
            raise ConfigError("install needs trusted signing keys")
        source = Path(bundle_file_or_dir)
        with tempfile.TemporaryDirectory(prefix="edgecloud-install-") as tmp:
            if source.is_dir():
                manifest = bundle.verify_bundle_dir(source, keys)
            else:
                manifest = bundle.unpack_bundle(source, Path(tmp) / "b", keys)
                source = Path(tmp) / "b"
            if check is not None:
                check(manifest)
            with self._lock(manifest.name) as model_dir:
                target = model_dir / str(manifest.version)
                if target.exists():
                    existing = bundle.read_manifest(target)
                    if existing.files == manifest.files:
                        return existing
                    raise Conflict(f"{manifest.ref} already installed with different content")
                staging = Path(tempfile.mkdtemp(dir=model_dir, prefix=".staging-"))
                staging.chmod(0o755)
                for name in _FILES:
                    shutil.copyfile(source / name, staging / name)
                    with open(staging / name, "rb+") as fh:
                        os.fsync(fh.fileno())
                _fsync_dir(staging)
                os.rename(staging, target)
                _fsync_dir(model_dir)
                self._record(manifest.name, manifest.version, "install")
                if self.active(manifest.name) is None:
                    self._set_active(manifest.name, manifest.version, "activate")
                self._write_config(manifest.name)
        log.info("installed %s into %s", manifest.ref, self.root)
        return manifest

    def activate(self, name: str, version: int) -> None:
        with self._lock(name):
            self._version_dir(name, version)
            if self.active(name) != version:
                self._set_active(name, version, "activate")
                self._write_config(name)

    def rollback(self, name: str) -> int:
        """Re-activate the version that was active before the current one."""
        with self._lock(name):
            state = self._state(name)
            stack: list[int] = state["stack"]
            current = self.active(name)
            available = set(self.versions(name))
            while stack and stack[-1] == current:
                stack.pop()
            while stack and stack[-1] not in available:
                stack.pop()
            if not stack:
                raise Conflict(f"model {name} has no earlier version to roll back to")
            target = stack[-1]
            self._save_state(name, state)
            self._set_active(name, target, "rollback", push=False)
            self._write_config(name)
            return target

    def prune(self, name: str, keep: int) -> list[int]:
        """Delete all but the newest ``keep`` versions, never the active one."""
        if keep < 1:
            raise ConfigError("prune must keep at least one version")
        removed: list[int] = []
        with self._lock(name) as model_dir:
            active = self.active(name)
            versions = self.versions(name)
            survivors = set(versions[-keep:]) | ({active} if active is not None else set())
            for version in versions:
                if version in survivors:
                    continue
                # Rename first so no reader ever sees a half-deleted version.
                trash = model_dir / f".staging-trash-{version}-{os.getpid()}"
                os.rename(model_dir / str(version), trash)
                shutil.rmtree(trash, ignore_errors=True)
                removed.append(version)
                self._record(name, version, "prune")
            if removed:
                self._write_config(name)
        return removed

    # ---- state (called with the lock held) -------------------------------------------
    def _state(self, name: str) -> dict:
        try:
            state = json.loads((self._model_dir(name) / "state.json").read_text())
        except (FileNotFoundError, ValueError):
            state = {}
        return {"stack": list(state.get("stack", [])), "events": list(state.get("events", []))}

    def _save_state(self, name: str, state: dict) -> None:
        state["events"] = state["events"][-_EVENTS_KEPT:]
        _atomic_write(self._model_dir(name) / "state.json", json.dumps(state).encode())

    def _record(self, name: str, version: int, event: str, *, push: bool = False) -> None:
        state = self._state(name)
        if push:
            state["stack"].append(version)
        state["events"].append({"version": version, "at": time.time(), "event": event})
        self._save_state(name, state)

    def _set_active(self, name: str, version: int, event: str, *, push: bool = True) -> None:
        self._record(name, version, event, push=push)
        _atomic_write(self._model_dir(name) / "active", f"{version}\n".encode())

    def _write_config(self, name: str) -> None:
        versions = self.versions(name)
        if not versions:
            return
        version = self.active(name) or versions[-1]
        try:
            manifest = bundle.read_manifest(self._model_dir(name) / str(version))
        except BundleError as exc:
            log.error("cannot generate config.pbtxt for %s: %s", name, exc.message)
            return
        _atomic_write(self._model_dir(name) / "config.pbtxt", config_pbtxt(manifest).encode())
