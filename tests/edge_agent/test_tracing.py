"""Tracing (issue 14 item 4): one offloaded reading is one trace whose spans come from the
edge agent and the cloud tier, both processes exporting OTLP/JSON to a small in-test
receiver, with the cloud span a child of the agent's offload call."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from offload.tracing import Tracer, parse_traceparent, traceparent
from tests.edge_agent.conftest import (
    AgentProcess,
    OffloadServer,
    Subscriber,
    process_args,
    publisher,
    reading,
)


class Receiver(ThreadingHTTPServer):
    """An OTLP/HTTP endpoint that keeps every span it is sent, with its service name."""

    def __init__(self) -> None:
        self.spans: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                ok = self.path == "/v1/traces" and "json" in self.headers["Content-Type"]
                if ok:
                    receiver.add(json.loads(body))
                self.send_response(200 if ok else 404)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args: Any) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server_address[1]}"

    def add(self, doc: dict[str, Any]) -> None:
        for rs in doc["resourceSpans"]:
            attrs = {a["key"]: a["value"] for a in rs["resource"]["attributes"]}
            service = attrs["service.name"]["stringValue"]
            for ss in rs["scopeSpans"]:
                with self.lock:
                    self.spans += [s | {"service": service} for s in ss["spans"]]

    def trace(self, trace_id: str) -> list[dict[str, Any]]:
        with self.lock:
            return [s for s in self.spans if s["traceId"] == trace_id]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


def test_traceparent_round_trip_and_refusals() -> None:
    tracer = Tracer("http://127.0.0.1:9", "t", flush_s=3600)
    try:
        ctx = tracer.sample()
        assert ctx is not None and parse_traceparent(traceparent(ctx)) == ctx
        for bad in ("", "00-xyz", "00-" + "0" * 32 + "-" + "1" * 16 + "-01", "ff-" + "a" * 49):
            assert parse_traceparent(bad) is None
        assert parse_traceparent(f"00-{'a' * 32}-{'b' * 16}-00") is None  # not sampled
    finally:
        tracer.close()  # the export to a closed port fails quietly, counted
    assert tracer.failed == 0 and tracer.exported == 0  # nothing recorded, nothing sent


@pytest.mark.slow
def test_one_offloaded_reading_is_one_trace_across_both_processes(
    mosquitto: Any, repo: Path, topic_prefix: str, receiver: Receiver
) -> None:
    cloud = OffloadServer(repo, "--otlp-endpoint", receiver.url)
    agent = AgentProcess(
        process_args(
            f"{topic_prefix}-tr",
            mosquitto.url,
            repo,
            topic_prefix,
            *("--cloud", cloud.target, "--policy", "cloud-only"),
            *("--otlp-endpoint", receiver.url, "--trace-sample-ratio", "1"),
        )
    )
    results = Subscriber(mosquitto.url, f"{topic_prefix}/results/#")
    try:
        agent.wait_ready()
        pub = publisher(mosquitto.url)
        rng = np.random.default_rng(9)
        for seq in range(100):  # one window
            pub.publish(f"{topic_prefix}/sensors/s/d/imu", reading(seq, rng.normal(size=6)), qos=1)
        result = results.wait_for(1, timeout=20)[0]
        pub.loop_stop()
        assert result["route"] == "cloud", result
        trace_id = result["trace_id"]
        end = time.monotonic() + 15
        while time.monotonic() < end:
            spans = receiver.trace(trace_id)
            if {s["name"] for s in spans} >= {"edge-agent request", "cloud inference"}:
                break
            time.sleep(0.2)
    finally:
        agent.stop()
        cloud.kill()
        results.close()
    by_name = {s["name"]: s for s in spans}
    assert set(by_name) == {
        "edge-agent request",
        "ingest",
        "batch",
        "offload call",
        "cloud inference",
    }, sorted(by_name)
    root, call, server = (
        by_name["edge-agent request"],
        by_name["offload call"],
        by_name["cloud inference"],
    )
    assert "parentSpanId" not in root and root["service"] == "edge-agent"
    for name in ("ingest", "batch", "offload call"):
        assert by_name[name]["parentSpanId"] == root["spanId"]
        assert by_name[name]["service"] == "edge-agent"
    assert server["service"] == "offload-server"
    assert server["parentSpanId"] == call["spanId"]  # the context crossed the gRPC call
    assert int(call["startTimeUnixNano"]) <= int(server["startTimeUnixNano"])
    assert int(server["endTimeUnixNano"]) <= int(call["endTimeUnixNano"]) + 5_000_000
    attrs = {a["key"]: a["value"] for a in server["attributes"]}
    assert attrs["model"]["stringValue"] == "motion-edge" and attrs["code"]["stringValue"] == "OK"
