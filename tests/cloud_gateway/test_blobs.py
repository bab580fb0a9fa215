"""The shared blob store: one replica's restart never removes another's upload."""

from __future__ import annotations

import os
import time
from pathlib import Path

from cloud_gateway.blobs import STALE_UPLOAD_S, DirectoryBlobStore


def _upload(store: DirectoryBlobStore, data: bytes) -> Path:
    fd, tmp = store.new_upload()
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    return tmp


def test_a_restarting_replica_leaves_a_live_upload_of_another_alone(tmp_path: Path) -> None:
    a = DirectoryBlobStore(tmp_path, shared=True)
    b = DirectoryBlobStore(tmp_path, shared=True)
    receiving = _upload(a, b"half a bundle")
    crashed = DirectoryBlobStore(tmp_path, shared=True)
    stale = _upload(crashed, b"left by a crash")
    old = time.time() - STALE_UPLOAD_S - 60
    os.utime(stale, (old, old))
    os.utime(stale.parent, (old, old))
    b.cleanup()  # b restarts
    assert receiving.read_bytes() == b"half a bundle"
    assert not stale.exists()
    a.commit(receiving, "ab" * 32)
    assert a.path("ab" * 32).read_bytes() == b"half a bundle" == b.path("ab" * 32).read_bytes()
    b.delete("ab" * 32)
    assert not a.path("ab" * 32).exists()


def test_a_single_replica_removes_every_partial_upload(tmp_path: Path) -> None:
    before = DirectoryBlobStore(tmp_path)
    partial = _upload(before, b"cut short")
    DirectoryBlobStore(tmp_path).cleanup()
    assert not partial.exists()
