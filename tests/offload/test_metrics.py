"""/metrics speaks Triton's names and types, agrees with the statistics, and has process_*."""

from __future__ import annotations

import numpy as np
import pytest
import tritonclient.grpc as tg
from prometheus_client.parser import text_string_to_metric_families
from tritonclient.utils import InferenceServerException

from offload.metrics import TRITON_FAMILIES, ServerMetrics
from tests.offload.conftest import ServerProcess
from tests.offload.graphs import WIDTH

COUNTERS = (
    "nv_inference_request_success",
    "nv_inference_request_failure",
    "nv_inference_count",
    "nv_inference_exec_count",
    "nv_inference_request_duration_us",
    "nv_inference_queue_duration_us",
    "nv_inference_compute_input_duration_us",
    "nv_inference_compute_infer_duration_us",
    "nv_inference_compute_output_duration_us",
)


def test_scrape_has_triton_names_types_and_labels(server: ServerProcess) -> None:
    client = tg.InferenceServerClient(server.target)
    x = np.ones((3, WIDTH), np.float32)
    tensor = tg.InferInput("x", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    for _ in range(4):
        client.infer("affine", [tensor], model_version="1")
    bad = tg.InferInput("x", [1, WIDTH + 1], "FP32")
    bad.set_data_from_numpy(np.ones((1, WIDTH + 1), np.float32))
    with pytest.raises(InferenceServerException):  # one failure, counted
        client.infer("affine", [bad], model_version="1")

    text = server.metrics()
    # Triton's exposition: counters without a _total suffix, as Triton dashboards query them.
    assert "# TYPE nv_inference_request_success counter\n" in text
    assert 'nv_inference_request_success{model="affine",version="1"} ' in text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    for name in COUNTERS:
        assert families[name].type == "counter", name
    success = {
        tuple(sorted(s.labels.items())): s.value
        for s in families["nv_inference_request_success"].samples
    }
    key = (("model", "affine"), ("version", "1"))
    stats = client.get_inference_statistics("affine", "1").model_stats[0].inference_stats
    assert success[key] == stats.success.count >= 4
    failures = [
        s for s in families["nv_inference_request_failure"].samples if s.labels["model"] == "affine"
    ]
    assert sum(s.value for s in failures) == stats.fail.count >= 1
    assert {s.labels["reason"] for s in failures} <= {"REJECTED", "CANCELED", "BACKEND", "OTHER"}
    infer_us = {
        tuple(sorted(s.labels.items())): s.value
        for s in families["nv_inference_compute_infer_duration_us"].samples
    }
    assert infer_us[key] == stats.compute_infer.ns // 1000
    assert families["process_resident_memory_bytes"].type == "gauge"
    assert families["process_cpu_seconds"].type == "counter"
    assert families["offload_request_duration_seconds"].type == "histogram"


def test_registry_declares_every_triton_family() -> None:
    names = {f.name for f in ServerMetrics().registry.collect()}
    assert set(TRITON_FAMILIES) == set(COUNTERS)
    assert set(COUNTERS) <= names
    assert {"process_resident_memory_bytes", "python_info"} <= names
