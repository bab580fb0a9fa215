"""The edge agent's /metrics (issue 14 item 3): parsed with prometheus_client's parser,
the right types, per-model labels, and every result observed by the latency histogram."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from tests.edge_agent.conftest import agent_settings, publisher, reading
from tests.manifests.promql import check_queries

TYPES = {
    "edge_readings": "counter",
    "edge_results": "counter",
    "edge_deadlines": "counter",
    "edge_inference_errors": "counter",
    "edge_fallbacks": "counter",
    "edge_cascade_escalations": "counter",
    "edge_deadletter": "counter",
    "edge_stream_evictions": "counter",
    "edge_result_latency_seconds": "histogram",
    "edge_batch_compute_seconds": "histogram",
    "edge_batch_size": "histogram",
    "edge_model_info": "gauge",
    "edge_queue_depth": "gauge",
    "edge_cloud_breaker_state": "gauge",
    "process_cpu_seconds": "counter",
    "process_resident_memory_bytes": "gauge",
}


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


async def test_metrics_types_labels_and_every_result_observed(
    mosquitto: Any, repo: Path, topic_prefix: str, make_agent: Any, subscriber: Any
) -> None:
    vib = f"{topic_prefix}/sensors/+/+/vib"
    settings = agent_settings(
        mosquitto.url, repo, topic_prefix, model=["motion-edge", f"vibration-anomaly={vib}"]
    )
    agent = await make_agent(settings)
    results = subscriber(f"{topic_prefix}/results/#")
    pub = publisher(mosquitto.url)
    rng = np.random.default_rng(6)
    try:
        for seq in range(300):  # 21 motion windows (window 100, hop 10): batches > 8
            pub.publish(f"{topic_prefix}/sensors/s/a/imu", reading(seq, rng.normal(size=6)), qos=1)
            pub.publish(f"{topic_prefix}/sensors/s/b/vib", reading(seq, rng.normal(size=3)), qos=1)
        await asyncio.to_thread(results.wait_for, 21 + 1, 20.0)
    finally:
        pub.loop_stop()
    await asyncio.sleep(1.2)  # one telemetry tick exports the reading counters
    url = f"http://127.0.0.1:{agent.http_port}/metrics"
    async with aiohttp.ClientSession() as http, http.get(url) as r:
        text = await r.text()
    families = {f.name: f.type for f in text_string_to_metric_families(text)}
    for name, kind in TYPES.items():
        assert families.get(name) == kind, (name, families.get(name))
    s = _samples(text)
    for model, n in (("motion-edge", 21), ("vibration-anomaly", 1)):
        results_n = s[("edge_results_total", (("model", model), ("route", "edge")))]
        count = s[("edge_result_latency_seconds_count", (("model", model), ("route", "edge")))]
        assert results_n == count == n  # every result observed, not a sample per batch
        met = s.get(("edge_deadlines_total", (("model", model), ("outcome", "met"))), 0.0)
        missed = s.get(("edge_deadlines_total", (("model", model), ("outcome", "missed"))), 0.0)
        assert met + missed == n
        assert s[("edge_readings_total", (("model", model),))] == 300
        assert s[("edge_model_info", (("model", model), ("version", "1")))] == 1
    assert s[("edge_cloud_breaker_state", (("state", "none"),))] == 1
    # The Grafana dashboard's edge queries name what this scrape has, with the right types.
    assert check_queries(text, re.compile(r"\bedge_[a-z0-9_]+\b")) >= 15
