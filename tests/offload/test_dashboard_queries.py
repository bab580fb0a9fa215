"""The Grafana dashboard's cloud-tier queries against a real ``/metrics`` scrape: every
metric a query names exists in the scrape, and ``rate()`` is applied only to counters
(and histogram series), never to a gauge."""

from __future__ import annotations

import json
import re

import numpy as np
import tritonclient.grpc as tg
from prometheus_client.parser import text_string_to_metric_families

from tests.manifests.rendering import MANIFESTS
from tests.offload.conftest import ServerProcess
from tests.offload.graphs import WIDTH

DASHBOARD = MANIFESTS / "cloud" / "grafana" / "edgecloud-dashboard.json"
CLOUD_METRIC = re.compile(r"\b(?:nv|offload)_[a-z0-9_]+\b")
IN_RATE = re.compile(r"rate\(\s*([a-z_][a-z0-9_]*)")


def scrape_types(text: str) -> dict[str, str]:
    """Series name as PromQL sees it -> its family's type."""
    types: dict[str, str] = {}
    for family in text_string_to_metric_families(text):
        types[family.name] = family.type
        for sample in family.samples:
            types[sample.name] = family.type
        if family.type == "counter":
            types[family.name + "_total"] = "counter"
    # Triton's counters are exposed without _total; PromQL uses the exposed name.
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            types[name] = kind
    return types


def test_cloud_queries_match_a_real_scrape(server: ServerProcess) -> None:
    client = tg.InferenceServerClient(server.target)
    x = np.ones((2, WIDTH), np.float32)
    t = tg.InferInput("x", list(x.shape), "FP32")
    t.set_data_from_numpy(x)
    client.infer("affine", [t])  # so labelled series have samples
    types = scrape_types(server.metrics())
    dashboard = json.loads(DASHBOARD.read_text())
    queries = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    checked = 0
    for query in queries:
        in_rate = set(IN_RATE.findall(query))
        for name in CLOUD_METRIC.findall(query):
            assert name in types, f"{name} (in {query!r}) is not in the scrape"
            if name in in_rate:
                assert types[name] in {"counter", "histogram"}, f"rate() of a {types[name]}: {name}"
            else:
                assert types[name] == "gauge", f"{name} used as a gauge but is {types[name]}"
            checked += 1
    assert checked >= 20
    assert types["nv_inference_request_success"] == "counter"
    assert types["process_resident_memory_bytes"] == "gauge"
