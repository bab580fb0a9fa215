"""TensorRT backend: cache-key logic and the lazy import. GPU paths are unverified here."""

from __future__ import annotations

import sys

import pytest

from models.backends import Capabilities, load_backend
from models.backends.tensorrt import TrtBackend, engine_cache_key
from models.errors import MissingDependency

SHA = "ab" * 32


def test_cache_key_is_stable_and_depends_on_every_input() -> None:
    base = engine_cache_key(SHA, "10.3.0", "Orin", fp16=True, max_batch=256)
    assert base == engine_cache_key(SHA, "10.3.0", "Orin", fp16=True, max_batch=256)
    assert base.endswith(".engine")
    variants = {
        engine_cache_key("cd" * 32, "10.3.0", "Orin", fp16=True, max_batch=256),
        engine_cache_key(SHA, "10.4.0", "Orin", fp16=True, max_batch=256),
        engine_cache_key(SHA, "10.3.0", "RTX 4090", fp16=True, max_batch=256),
        engine_cache_key(SHA, "10.3.0", "Orin", fp16=False, max_batch=256),
        engine_cache_key(SHA, "10.3.0", "Orin", fp16=True, max_batch=64),
    }
    assert base not in variants and len(variants) == 5


def test_missing_tensorrt_raises_with_install_hint(built, monkeypatch) -> None:
    # None in sys.modules makes `import tensorrt` fail even where it is installed.
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    path = built.repository / "motion-edge" / "1" / "model.onnx"
    with pytest.raises(MissingDependency, match=r"pip install 'edgecloud\[tensorrt\]'"):
        TrtBackend(path)
    caps = Capabilities("10.3.0", True, "Orin", ())
    with pytest.raises(MissingDependency):
        load_backend(path, "auto", capabilities=caps)
