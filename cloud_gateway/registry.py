"""The model registry: verified bundles in a content-addressed blob store, metadata in the
gateway database.

An upload is streamed to a temporary file (with a size cap), then fully verified in a
worker thread with :func:`models.bundle.unpack_bundle` (safe extraction, sha256 of every
file, signature against the trusted keys, the ONNX graph loads and matches the manifest,
the test vectors pass). Only then is it committed to the blob store
(:mod:`cloud_gateway.blobs`) under its sha256.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import tempfile
import time
from collections.abc import AsyncIterator
from concurrent.futures import Executor
from pathlib import Path
from typing import Any

from cloud_gateway.blobs import BlobStore
from cloud_gateway.db import Database, IntegrityConflict, loads
from models.errors import BundleTooLarge, Conflict, InvalidInput, NotFound, Status
from models.manifest import Manifest, validate_model_name
from models.servable import check_servable


class VersionExists(Conflict):
    status = Status.ALREADY_EXISTS


class VersionInUse(Conflict):
    """A deployment or rollout still refers to the version."""


def _verify(bundle: Path, trusted_keys: dict[str, Any], max_bytes: int) -> tuple[Manifest, str]:
    from models.bundle import unpack_bundle

    with tempfile.TemporaryDirectory(prefix="verify-", dir=bundle.parent) as tmp:
        manifest = unpack_bundle(bundle, Path(tmp) / "b", trusted_keys, max_bytes=max_bytes)
        # Refuse here what no edge agent could feed, before any rollout reaches an agent.
        check_servable(manifest)
        signer = ""
        sig = Path(tmp) / "b" / "signature.json"
        if sig.exists():
            signer = str(json.loads(sig.read_text()).get("key_id", ""))
    return manifest, signer


class Registry:
    """Upload, list, download and delete model versions."""

    def __init__(
        self,
        db: Database,
        blobs: BlobStore,
        trusted_keys: dict[str, Any],
        *,
        max_bytes: int,
        executor: Executor | None = None,
    ) -> None:
        self.db = db
        self.blobs = blobs
        self.trusted_keys = trusted_keys
        self.max_bytes = max_bytes
        self.executor = executor

    def blob_path(self, sha256: str) -> Path:
        return self.blobs.path(sha256)

    async def upload(self, chunks: AsyncIterator[bytes]) -> tuple[dict[str, Any], bool]:
        """Store a verified bundle: (row, created). Re-uploading the same file is a no-op."""
        fd, tmp = self.blobs.new_upload()
        try:
            digest = hashlib.sha256()
            size = 0
            loop = asyncio.get_running_loop()
            with os.fdopen(fd, "wb") as out:
                async for chunk in chunks:
                    size += len(chunk)
                    if size > self.max_bytes:
                        raise BundleTooLarge(
                            f"bundle larger than the limit of {self.max_bytes} bytes"
                        )
                    digest.update(chunk)
                    await loop.run_in_executor(self.executor, out.write, chunk)
            if size == 0:
                raise InvalidInput("empty upload: send the bundle file as the request body")
            manifest, signer = await loop.run_in_executor(
                self.executor, _verify, tmp, self.trusted_keys, self.max_bytes
            )
            sha = digest.hexdigest()
            existing = self.find(manifest.name, manifest.version)
            if existing is not None:
                if existing["sha256"] == sha:
                    return existing, False
                raise VersionExists(
                    f"{manifest.ref} already exists with a different bundle; bump the version"
                )
            self.blobs.commit(tmp, sha)
            row = {
                "name": manifest.name,
                "version": manifest.version,
                "sha256": sha,
                "size": size,
                "signer": signer,
                "manifest": manifest.model_dump_json(),
                "uploaded_at": time.time(),
            }
            try:
                self.db.table("versions").insert(row)
            except IntegrityConflict:  # a concurrent upload of the same version won
                raise VersionExists(f"{manifest.ref} was uploaded concurrently") from None
            return row, True
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)

    def find(self, name: str, version: int) -> dict[str, Any] | None:
        rows = list(
            self.db.table("versions").rows_where(
                "name = ? and version = ?", [name, version], limit=1
            )
        )
        return rows[0] if rows else None

    def get(self, name: str, version: int) -> dict[str, Any]:
        row = self.find(name, version)
        if row is None:
            raise NotFound(f"model version {name}:{version} is not in the registry")
        return row

    def versions(self, name: str) -> list[dict[str, Any]]:
        validate_name(name)
        rows = list(self.db.table("versions").rows_where("name = ?", [name], order_by="version"))
        if not rows:
            raise NotFound(f"model {name!r} is not in the registry")
        return rows

    def models(self) -> dict[str, list[int]]:
        out: dict[str, list[int]] = {}
        for row in self.db.query("select name, version from versions order by name, version"):
            out.setdefault(row["name"], []).append(row["version"])
        return out

    def in_use(self, name: str, version: int) -> str | None:
        """Why the version cannot be deleted, or None."""
        for row in self.db.query(
            "select agent_id from desired where model = ? and version = ?"
            " and coalesce(state, 'serving') = 'serving' limit 1",
            [name, version],
        ):
            return f"agent {row['agent_id']} is asked to run it"
        for row in self.db.query(
            "select id from rollouts where model = ? and state in ('running', 'baking')"
            " and (version = ? or id in (select rollout_id from rollout_agents"
            " where previous_version = ?)) limit 1",
            [name, version, version],
        ):
            return f"rollout {row['id']} is in progress"
        for row in self.db.query(
            "select agent_id, models from agents where models like ?", [f'%"{name}"%']
        ):
            served = loads(row["models"], {}).get(name, {})
            if isinstance(served, dict) and served.get("version") == version:
                return f"agent {row['agent_id']} is serving it"
        return None

    def delete(self, name: str, version: int) -> None:
        row = self.get(name, version)
        why = self.in_use(name, version)
        if why is not None:
            raise VersionInUse(f"{name}:{version} is in use: {why}")
        self.db.table("versions").delete((name, version))
        others = self.db.execute(
            "select count(*) from versions where sha256 = ?", [row["sha256"]]
        ).fetchone()[0]
        if not others:
            self.blobs.delete(row["sha256"])

    def cleanup_incoming(self) -> None:
        """Remove partial uploads left by a crash."""
        self.blobs.cleanup()


def validate_name(name: str) -> str:
    try:
        return validate_model_name(name)
    except ValueError as exc:
        raise InvalidInput(str(exc)) from None
