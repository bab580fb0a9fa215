"""OrtBackend against a direct onnxruntime.InferenceSession, plus its input checking."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from models.backends import BackendOptions
from models.backends.onnxruntime import (
    CPU_EP,
    CUDA_EP,
    TRT_EP,
    OrtBackend,
    ort_dtype,
    select_providers,
)
from models.errors import BackendError, InvalidInput
from models.repository import ModelRepository

NAMES = ("motion-edge", "motion-cloud", "vibration-anomaly")


@pytest.mark.parametrize("name", NAMES)
def test_outputs_equal_direct_session_for_every_batch_size_1_to_256(built, name: str) -> None:
    path = ModelRepository(built.repository).model_path(name, 1)
    backend = OrtBackend(path, BackendOptions(intra_op_threads=2))
    session = ort.InferenceSession(str(path), providers=[CPU_EP])
    spec = backend.inputs[0]
    rng = np.random.default_rng(42)
    out_name = backend.outputs[0].name
    for batch in range(1, 257):
        x = (rng.standard_normal((batch, *spec.shape[1:])) * 3).astype(np.float32)
        got = backend.infer({spec.name: x})
        (want,) = session.run([out_name], {spec.name: x})
        assert got[out_name].shape == (batch, backend.outputs[0].shape[1])
        np.testing.assert_allclose(got[out_name], want, rtol=1e-5, atol=1e-6)
    backend.close()


def test_specs_come_from_the_graph(built) -> None:
    backend = OrtBackend(ModelRepository(built.repository).model_path("motion-edge", 1))
    assert [(s.name, s.dtype, s.shape) for s in backend.inputs] == [("input", "FP32", (-1, 100, 6))]
    assert [(s.name, s.dtype, s.shape) for s in backend.outputs] == [
        ("probabilities", "FP32", (-1, 4))
    ]
    assert "CPUExecutionProvider" in backend.description
    backend.warmup((1, 64))


def test_bad_inputs_raise_invalid_input(built) -> None:
    backend = OrtBackend(ModelRepository(built.repository).model_path("motion-edge", 1))
    good = np.zeros((2, 100, 6), np.float32)
    with pytest.raises(InvalidInput, match="shape"):
        backend.infer({"input": np.zeros((2, 99, 6), np.float32)})
    with pytest.raises(InvalidInput, match="missing"):
        backend.infer({})
    with pytest.raises(InvalidInput, match="unknown"):
        backend.infer({"input": good, "other": good})
    with pytest.raises(InvalidInput, match="dtype"):
        backend.infer({"input": np.zeros((2, 100, 6), np.complex64)})
    # float64 is accepted and converted, as the edge agent's windows may be float64.
    assert backend.infer({"input": good.astype(np.float64)})["probabilities"].shape == (2, 4)
    backend.close()
    with pytest.raises(BackendError, match="closed"):
        backend.infer({"input": good})


def test_concurrent_infer_from_threads_is_consistent(built) -> None:
    backend = OrtBackend(ModelRepository(built.repository).model_path("motion-cloud", 1))
    x = np.random.default_rng(1).standard_normal((16, 100, 6)).astype(np.float32)
    want = backend.infer({"input": x})["probabilities"]
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            for _ in range(50):
                np.testing.assert_array_equal(backend.infer({"input": x})["probabilities"], want)
        except BaseException as exc:  # collected and re-raised in the test thread
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


def test_unloadable_model_is_a_backend_error(tmp_path: Path) -> None:
    (tmp_path / "bad.onnx").write_bytes(b"not onnx")
    with pytest.raises(BackendError, match="cannot load"):
        OrtBackend(tmp_path / "bad.onnx")


def test_ort_dtype_mapping() -> None:
    assert ort_dtype("tensor(float)") == "FP32"
    assert ort_dtype("tensor(int64)") == "INT64"
    with pytest.raises(BackendError):
        ort_dtype("tensor(string)")


def test_select_providers_cpu_only_machine() -> None:
    assert select_providers([CPU_EP], BackendOptions()) == [(CPU_EP, {})]


def test_select_providers_gpu_machine_orders_and_configures(tmp_path: Path) -> None:
    opts = BackendOptions(fp16=True, cache_dir=tmp_path, device_id=1)
    chosen = select_providers([TRT_EP, CUDA_EP, CPU_EP], opts)
    assert [name for name, _ in chosen] == [TRT_EP, CUDA_EP, CPU_EP]
    trt = chosen[0][1]
    assert trt["trt_fp16_enable"] == "True"
    assert trt["trt_engine_cache_enable"] == "True"
    assert trt["trt_engine_cache_path"] == str(tmp_path)
    assert chosen[1][1] == {"device_id": "1"}


def test_select_providers_explicit_list_drops_missing_and_keeps_cpu() -> None:
    chosen = select_providers([CPU_EP], BackendOptions(providers=(CUDA_EP,)))
    assert chosen == [(CPU_EP, {})]
    chosen = select_providers([CUDA_EP, CPU_EP], BackendOptions(providers=(CUDA_EP,)))
    assert [name for name, _ in chosen] == [CUDA_EP, CPU_EP]
