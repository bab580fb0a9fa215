"""Prometheus metrics of the offload server, per model and version, in a private registry.

A private :class:`~prometheus_client.CollectorRegistry` per server keeps several servers in
one process (tests, simulators) from clashing. Label children are resolved once per model
version so the hot path only calls ``observe``.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from offload.batcher import BatchObserver

_LATENCY_BUCKETS = (
    0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0,
)  # fmt: skip
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


class ServerMetrics:
    """All metric families of one server."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        labels = ("model", "version")
        self.request_seconds = Histogram(
            "offload_request_duration_seconds",
            "Time from a request's arrival to its response, server side",
            labels,
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.queue_seconds = Histogram(
            "offload_queue_duration_seconds",
            "Time a request waited in the batcher queue before compute started",
            labels,
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.compute_seconds = Histogram(
            "offload_compute_duration_seconds",
            "Time one batch spent in the backend",
            labels,
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "offload_batch_size",
            "Rows per executed batch",
            labels,
            buckets=_BATCH_BUCKETS,
            registry=self.registry,
        )
        self.requests = Counter(
            "offload_requests",
            "Inference requests by outcome (gRPC status code name)",
            (*labels, "code"),
            registry=self.registry,
        )
        self.expired = Counter(
            "offload_expired_requests",
            "Requests dropped before compute because their deadline had passed",
            labels,
            registry=self.registry,
        )
        self.rejected = Counter(
            "offload_rejected_requests",
            "Requests refused before reaching a model (unknown model or version), by code",
            ("code",),
            registry=self.registry,
        )
        self.models_ready = Gauge(
            "offload_models_ready", "Model versions loaded and ready", registry=self.registry
        )

    def for_model(self, name: str, version: int) -> ModelMetrics:
        return ModelMetrics(self, name, str(version))

    def serve_http(self, port: int, host: str) -> int:
        """Expose ``/metrics`` on ``port`` (0 picks a free one); returns the bound port."""
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        self._http = server
        return int(server.server_port)

    def close(self) -> None:
        http = getattr(self, "_http", None)
        if http is not None:
            http.shutdown()
            http.server_close()


class ModelMetrics(BatchObserver):
    """Pre-resolved label children for one model version (also the batcher's observer)."""

    def __init__(self, metrics: ServerMetrics, name: str, version: str) -> None:
        self._metrics = metrics
        self._labels = (name, version)
        self.request = metrics.request_seconds.labels(name, version)
        self._queue = metrics.queue_seconds.labels(name, version)
        self._compute = metrics.compute_seconds.labels(name, version)
        self._batch = metrics.batch_size.labels(name, version)
        self._expired = metrics.expired.labels(name, version)
        self._ok = metrics.requests.labels(name, version, "OK")

    def batch(self, rows: int, compute_s: float) -> None:
        self._batch.observe(rows)
        self._compute.observe(compute_s)

    def queued(self, seconds: float) -> None:
        self._queue.observe(seconds)

    def expired(self) -> None:
        self._expired.inc()

    def ok(self, seconds: float) -> None:
        self.request.observe(seconds)
        self._ok.inc()

    def failed(self, code: str) -> None:
        self._metrics.requests.labels(*self._labels, code).inc()
