"""Serving one model version, the same way on the edge and in the cloud tier.

A :class:`Served` version is a backend that has been loaded, checked and warmed, with a
lease count: the edge agent's model slot leases it per batch, the cloud tier's store for
as long as it is loaded. :meth:`Served.retire` takes it out of service; the backend is
closed when its last lease is released, so a swap (load the new version first, then
retire the old) never fails a batch that is still running on the old one.

:func:`load` is the one way both build a version, in an executor and never on the event
loop: load the backend, run the caller's check, warm it with :func:`zero_feed` for each
batch size and time one more run of each (the edge router's first service-time estimates).
Third-party loader errors become :class:`~models.errors.BackendError`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from models.backends import Backend, BackendOptions, load_backend
from models.backends.base import zero_feed
from models.errors import BackendError, EdgecloudError
from models.manifest import Manifest

__all__ = ["Served", "load", "zero_feed"]


class Served:
    """One loaded version with a lease count (leases come from any thread)."""

    __slots__ = ("_lock", "backend", "closing", "leases", "manifest", "warm_times")

    def __init__(
        self,
        backend: Backend,
        manifest: Manifest | None = None,
        warm_times: dict[int, float] | None = None,
    ) -> None:
        self.backend = backend
        self.manifest = manifest  # None on a cloud tier serving a bare ONNX file
        # Seconds per batch size, timed once after warm-up.
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


def load(
    path: Path,
    kind: str,
    options: BackendOptions,
    *,
    manifest: Manifest | None = None,
    check: Callable[[Backend], None] = lambda backend: None,
    warm_sizes: Sequence[int] = (1,),
) -> Served:
    """Load, check and warm one version (blocking: run it in an executor)."""
    try:
        backend = load_backend(path, kind, options)
    except EdgecloudError:
        raise
    except Exception as exc:  # third-party loader errors: map once
        raise BackendError(f"cannot load {path}: {exc}") from exc
    try:
        check(backend)
        warm: dict[int, float] = {}
        for n in warm_sizes:
            feed = zero_feed(backend.inputs, n)
            backend.infer(feed)  # lazy initialisation is not part of the timing
            t0 = time.perf_counter()
            backend.infer(feed)
            warm[n] = time.perf_counter() - t0
    except EdgecloudError:
        backend.close()
        raise
    except Exception as exc:
        backend.close()
        raise BackendError(f"cannot run {path}: {exc}") from exc
    return Served(backend, manifest, warm)
