"""Backend auto-selection as a pure function of detected capabilities."""

from __future__ import annotations

import logging

import pytest

from models.backends import Capabilities, choose_backend, detect_capabilities, load_backend
from models.backends.onnxruntime import CPU_EP, CUDA_EP, OrtBackend
from models.errors import ConfigError
from models.repository import ModelRepository

GPU = "NVIDIA Jetson Orin Nano"


def test_tensorrt_first_when_everything_is_present() -> None:
    caps = Capabilities("10.3.0", True, GPU, (CUDA_EP, CPU_EP))
    choice = choose_backend("auto", caps)
    assert choice.kind == "tensorrt"
    assert "10.3.0" in choice.reason and GPU in choice.reason


@pytest.mark.parametrize(
    "caps, why",
    [
        (Capabilities(None, True, GPU, (CUDA_EP, CPU_EP)), "tensorrt python package"),
        (Capabilities("10.3.0", False, GPU, (CUDA_EP, CPU_EP)), "cuda-python"),
    ],
)
def test_ort_cuda_when_tensorrt_is_unusable(caps: Capabilities, why: str) -> None:
    choice = choose_backend("auto", caps)
    assert choice.kind == "onnxruntime"
    assert choice.providers == (CUDA_EP, CPU_EP)
    assert why in choice.reason


def test_cpu_when_gpu_but_no_cuda_provider() -> None:
    choice = choose_backend("auto", Capabilities(None, False, GPU, (CPU_EP,)))
    assert choice.providers == (CPU_EP,)
    assert "onnxruntime-gpu" in choice.reason


def test_cpu_without_gpu_even_if_libraries_exist() -> None:
    choice = choose_backend("auto", Capabilities("10.3.0", True, None, (CUDA_EP, CPU_EP)))
    assert (choice.kind, choice.providers) == ("onnxruntime", (CPU_EP,))
    assert "no NVIDIA GPU" in choice.reason


def test_explicit_kinds_are_honoured_and_unknown_rejected() -> None:
    assert choose_backend("tensorrt", Capabilities()).kind == "tensorrt"
    assert choose_backend("onnxruntime", Capabilities(gpu_name=GPU)).kind == "onnxruntime"
    with pytest.raises(ConfigError):
        choose_backend("openvino", Capabilities())


def test_detect_capabilities_reports_what_onnxruntime_has() -> None:
    import onnxruntime as ort

    caps = detect_capabilities()
    assert caps.ort_providers == tuple(ort.get_available_providers())
    assert CPU_EP in caps.ort_providers


def test_load_backend_auto_logs_choice_and_reason(built, caplog) -> None:
    path = ModelRepository(built.repository).model_path("motion-edge", 1)
    with caplog.at_level(logging.INFO, logger="models.backends"):
        backend = load_backend(path, "auto", capabilities=Capabilities())
    assert isinstance(backend, OrtBackend)
    assert backend.providers == [CPU_EP]
    assert any("onnxruntime CPU" in r.getMessage() for r in caplog.records)
    backend.close()
