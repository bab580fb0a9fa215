"""Where bundle files live: a content-addressed blob store the gateway replicas share.

:class:`BlobStore` is the interface the registry uses; :class:`DirectoryBlobStore`
implements it on a directory (local disk for one replica, a ReadWriteMany volume for
several). An object store (S3, GCS) fits the same interface: ``commit`` uploads the
verified file under its sha256, ``path`` returns a local cached copy to stream or load
(``FileResponse`` and the cloud tier's repository want a file), ``delete`` removes the
object. Uploads are verified from a local temporary file before they reach the store.
"""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
import time
from pathlib import Path
from typing import Protocol

# A partial upload older than this was left by a replica that crashed mid-upload.
STALE_UPLOAD_S = 6 * 3600.0


class BlobStore(Protocol):
    def new_upload(self) -> tuple[int, Path]:
        """An open file descriptor and the path of a new temporary upload file."""
        ...

    def commit(self, tmp: Path, sha256: str) -> None:
        """Move a verified upload into the store under its sha256 (atomic; idempotent)."""
        ...

    def path(self, sha256: str) -> Path:
        """A local file holding the blob ``sha256``."""
        ...

    def delete(self, sha256: str) -> None: ...

    def cleanup(self) -> None:
        """Forget this replica's partial uploads (and stale ones of crashed replicas)."""
        ...


class DirectoryBlobStore:
    """``ROOT/<sha[:2]>/<sha>.bundle``; uploads in ``ROOT/incoming/<replica>/``.

    Each replica writes its partial uploads to its own directory, so one that restarts
    (and cleans up after its own crash) never removes an upload another replica is
    still receiving; the same filesystem makes the final ``os.replace`` atomic."""

    def __init__(self, root: Path, *, shared: bool = False) -> None:
        self.root = root
        #: Other replicas write here too (only then are others' uploads left alone).
        self.shared = shared
        self._incoming = root / "incoming" / f"{os.getpid()}-{secrets.token_hex(4)}"
        self._incoming.mkdir(parents=True, exist_ok=True)

    def new_upload(self) -> tuple[int, Path]:
        self._incoming.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(suffix=".bundle", dir=self._incoming)
        return fd, Path(name)

    def commit(self, tmp: Path, sha256: str) -> None:
        dest = self.path(sha256)
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, dest)

    def path(self, sha256: str) -> Path:
        return self.root / sha256[:2] / f"{sha256}.bundle"

    def delete(self, sha256: str) -> None:
        self.path(sha256).unlink(missing_ok=True)

    def cleanup(self) -> None:
        incoming = self.root / "incoming"
        now = time.time()
        for entry in incoming.iterdir() if incoming.is_dir() else ():
            if entry == self._incoming:
                continue
            if entry.is_file():  # a partial upload of a gateway from before per-replica dirs
                entry.unlink(missing_ok=True)
                continue
            try:
                newest = max((f.stat().st_mtime for f in entry.iterdir()), default=0.0)
                idle = now - max(newest, entry.stat().st_mtime)
            except FileNotFoundError:
                continue  # its replica removed it meanwhile
            if not self.shared or idle > STALE_UPLOAD_S:
                shutil.rmtree(entry, ignore_errors=True)
        shutil.rmtree(self._incoming, ignore_errors=True)
        self._incoming.mkdir(parents=True, exist_ok=True)
