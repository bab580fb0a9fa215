"""The emulated slower device: same outputs as the real backend, capped throughput."""

from __future__ import annotations

import time

import numpy as np

from models.backends import BackendOptions, load_backend
from models.backends.emulated import EmulatedDevice
from models.recipes import BuildResult


def _model(built: BuildResult):
    return built.repository / "motion-edge" / "1" / "model.onnx"


def test_outputs_equal_the_wrapped_backend(built: BuildResult) -> None:
    plain = load_backend(_model(built), "onnxruntime")
    slow = load_backend(
        _model(built),
        "onnxruntime",
        BackendOptions(emulate_ms_per_batch=1.0, emulate_ms_per_item=0.5),
    )
    assert isinstance(slow, EmulatedDevice)
    assert "emulated device" in slow.description
    x = np.random.default_rng(0).normal(size=(8, 100, 6)).astype(np.float32)
    np.testing.assert_array_equal(
        slow.infer({"input": x})["probabilities"], plain.infer({"input": x})["probabilities"]
    )


def test_service_time_grows_with_the_batch(built: BuildResult) -> None:
    slow = load_backend(
        _model(built),
        "onnxruntime",
        BackendOptions(emulate_ms_per_batch=2.0, emulate_ms_per_item=1.0),
    )
    slow.warmup([1, 16])

    def took(n: int) -> float:
        x = np.zeros((n, 100, 6), dtype=np.float32)
        t0 = time.perf_counter()
        slow.infer({"input": x})
        return time.perf_counter() - t0

    # Lower bounds only: a sleep never returns early, a busy machine can only add time.
    assert took(1) >= 0.003
    assert took(16) >= 0.018


def test_disabled_by_default(built: BuildResult) -> None:
    assert not isinstance(load_backend(_model(built), "onnxruntime"), EmulatedDevice)
