"""Inference backends behind one small interface; see :mod:`models.backends.base`.

``load_backend(path, kind="auto")`` picks TensorRT, then ONNX Runtime CUDA, then ONNX
Runtime CPU, and logs the choice with its reason.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from models.backends.base import Backend, BackendOptions
from models.backends.selection import (
    Capabilities,
    Selection,
    choose_backend,
    detect_capabilities,
)

log = logging.getLogger(__name__)

__all__ = [
    "Backend",
    "BackendOptions",
    "Capabilities",
    "Selection",
    "choose_backend",
    "detect_capabilities",
    "load_backend",
]


def load_backend(
    model_path: Path | str,
    kind: str = "auto",
    options: BackendOptions | None = None,
    *,
    capabilities: Capabilities | None = None,
) -> Backend:
    """Load ``model_path`` (an ONNX file) on the backend ``kind`` selects.

    ``capabilities`` overrides detection (tests, or callers that already probed).
    """
    options = options or BackendOptions()
    backend = _load(model_path, kind, options, capabilities)
    if options.emulate_ms_per_batch or options.emulate_ms_per_item:
        from models.backends.emulated import EmulatedDevice

        backend = EmulatedDevice(
            backend,
            per_batch_ms=options.emulate_ms_per_batch,
            per_item_ms=options.emulate_ms_per_item,
        )
    return backend


def _load(
    model_path: Path | str,
    kind: str,
    options: BackendOptions,
    capabilities: Capabilities | None,
) -> Backend:
    if kind == "auto" and capabilities is None:
        capabilities = detect_capabilities()
    selection = choose_backend(kind, capabilities or Capabilities())
    log.info("backend for %s: %s (%s)", Path(model_path).name, selection.kind, selection.reason)
    if selection.kind == "tensorrt":
        from models.backends.tensorrt import TrtBackend

        return TrtBackend(model_path, options)
    from models.backends.onnxruntime import OrtBackend

    if selection.providers and not options.providers:
        options = dataclasses.replace(options, providers=selection.providers)
    return OrtBackend(model_path, options)
