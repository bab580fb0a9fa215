"""The Grafana dashboard's cloud-tier queries against a real ``/metrics`` scrape
(:mod:`tests.manifests.promql`)."""

from __future__ import annotations

import re

import numpy as np
import tritonclient.grpc as tg

from tests.manifests.promql import check_queries, scrape_types
from tests.offload.conftest import ServerProcess
from tests.offload.graphs import WIDTH

CLOUD_METRIC = re.compile(r"\b(?:nv|offload)_[a-z0-9_]+\b")


def test_cloud_queries_match_a_real_scrape(server: ServerProcess) -> None:
    client = tg.InferenceServerClient(server.target)
    x = np.ones((2, WIDTH), np.float32)
    t = tg.InferInput("x", list(x.shape), "FP32")
    t.set_data_from_numpy(x)
    client.infer("affine", [t])  # so labelled series have samples
    text = server.metrics()
    assert check_queries(text, CLOUD_METRIC) >= 20
    types = scrape_types(text)
    assert types["nv_inference_request_success"] == "counter"
    assert types["process_resident_memory_bytes"] == "gauge"
