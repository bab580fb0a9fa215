"""Counters, latency quantiles and the Prometheus metrics of an agent's served models.

One :class:`AgentMetrics` per agent holds the Prometheus registry (every family labelled
by ``model``; standard ``process_*`` series included); one :class:`Stats` per served model
holds its counters, its latency window and its pre-resolved label children.

Ingest counters are written only by the MQTT thread, result counters under ``Stats.lock``
(results are recorded by the loop and worker threads). Quantiles cover the last
``window_s`` seconds of results of the active model version only (see ``LatencyWindow``).
The latency histogram observes every result: :class:`BulkHistogram` adds a whole batch
with one ``searchsorted`` (``prometheus_client``'s per-value ``observe`` would cost ~1 us a
result at tens of thousands of results/s), so its ``_count`` equals ``edge_results_total``.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from typing import Any

import numpy as np
from prometheus_client import (
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Gauge,
    Histogram,
)
from prometheus_client import Counter as PCounter
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.registry import Collector

_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Rate:
    """Events per second over a sliding few seconds."""

    def __init__(self, span_s: float = 5.0) -> None:
        self._marks: deque[tuple[float, int]] = deque()
        self._span = span_s

    def rate(self, total: int, now: float | None = None) -> float:
        now = time.monotonic() if now is None else now
        self._marks.append((now, total))
        while len(self._marks) > 2 and now - self._marks[0][0] > self._span:
            self._marks.popleft()
        t0, n0 = self._marks[0]
        return (total - n0) / (now - t0) if now > t0 else 0.0


class LatencyWindow:
    """Latencies of the last ``window_s`` seconds in a fixed ring of per-second buckets.

    Time-based, not count-based: the rollout gates judge a new model version on its own
    recent results, not on thousands of samples from before a swap. Memory is fixed at
    ``cap`` floats; a second with more results than its share keeps its most recent ones
    and the quantiles weight it by how many it saw, so a busy second still counts in full.
    """

    def __init__(
        self, window_s: int = 60, cap: int = 32768, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.window_s = max(1, int(window_s))
        self.per_bucket = max(1, cap // self.window_s)
        self._clock = clock
        self._vals = np.zeros((self.window_s, self.per_bucket), dtype=np.float64)
        self._sec = np.full(self.window_s, -1, dtype=np.int64)  # which second a bucket holds
        self._seen = np.zeros(self.window_s, dtype=np.int64)  # results in that second

    def clear(self) -> None:
        self._sec[:] = -1
        self._seen[:] = 0

    def add(self, latencies: np.ndarray, now: float | None = None) -> None:
        n = len(latencies)
        if n == 0:
            return
        sec = int(self._clock() if now is None else now)
        b = sec % self.window_s
        if self._sec[b] != sec:  # the bucket still holds a second that has aged out
            self._sec[b], self._seen[b] = sec, 0
        w, start = self.per_bucket, int(self._seen[b])
        if n >= w:
            idx = np.arange(start + n - w, start + n) % w
            self._vals[b, idx] = latencies[-w:]
        else:
            self._vals[b, np.arange(start, start + n) % w] = latencies
        self._seen[b] += n

    def __len__(self) -> int:
        return int(self._seen[self._live()].sum())

    def _live(self, now: float | None = None) -> np.ndarray:
        sec = int(self._clock() if now is None else now)
        return (self._sec > sec - self.window_s) & (self._sec <= sec) & (self._seen > 0)

    def quantiles(self, qs: list[float], now: float | None = None) -> np.ndarray | None:
        """Percentiles ``qs`` (0-100) of the live window, None when it is empty."""
        live = np.flatnonzero(self._live(now))
        if live.size == 0:
            return None
        kept = np.minimum(self._seen[live], self.per_bucket)
        vals = np.concatenate([self._vals[b, :k] for b, k in zip(live, kept, strict=True)])
        if np.array_equal(kept, self._seen[live]):
            return np.percentile(vals, qs)
        weights = np.repeat(self._seen[live] / kept, kept)
        return np.percentile(vals, qs, weights=weights, method="inverted_cdf")


class BulkHistogram(Collector):
    """A labelled Prometheus histogram fed whole arrays at a time (see module doc)."""

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: tuple[str, ...],
        buckets: tuple[float, ...],
        registry: CollectorRegistry,
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = labelnames
        self.bounds = np.asarray(buckets, dtype=np.float64)
        self._series: dict[tuple[str, ...], list[Any]] = {}  # labels -> [counts, sum]
        self._lock = threading.Lock()
        registry.register(self)

    def observe_many(self, labels: tuple[str, ...], values: np.ndarray) -> None:
        if len(values) == 0:
            return
        # Bucket i counts values <= bounds[i] (Prometheus' "le"); the last one is +Inf.
        idx = np.searchsorted(self.bounds, values, side="left")
        counts = np.bincount(idx, minlength=len(self.bounds) + 1)
        total = float(values.sum())
        with self._lock:
            series = self._series.get(labels)
            if series is None:
                series = self._series[labels] = [np.zeros(len(self.bounds) + 1, np.int64), 0.0]
            series[0] += counts
            series[1] += total

    def describe(self) -> list[HistogramMetricFamily]:
        return [HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)]

    def collect(self) -> list[HistogramMetricFamily]:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        with self._lock:
            items = [(k, v[0].copy(), v[1]) for k, v in self._series.items()]
        for labels, counts, total in items:
            cum = np.cumsum(counts).tolist()
            buckets = [(repr(float(b)), c) for b, c in zip(self.bounds, cum, strict=False)]
            buckets.append(("+Inf", cum[-1]))
            family.add_metric(list(labels), buckets, total)
        return [family]


class AgentMetrics:
    """The agent's Prometheus registry: every family once, labelled by model."""

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        # Standard process_* and python_info series (a private registry has none by default).
        r.register(PROCESS_COLLECTOR)
        r.register(PLATFORM_COLLECTOR)
        self.latency = BulkHistogram(
            "edge_result_latency_seconds",
            "Sensor ts (or arrival, see --deadline-from) to result publish, every result",
            ("model", "route"),
            _BUCKETS,
            r,
        )
        self.compute = Histogram(
            "edge_batch_compute_seconds",
            "Inference time per batch",
            ["model", "route"],
            buckets=_BUCKETS,
            registry=r,
        )
        self.batch = Histogram(
            "edge_batch_size",
            "Requests per batch",
            ["model"],
            buckets=_BATCH_BUCKETS,
            registry=r,
        )
        self.results = PCounter("edge_results", "Results published", ["model", "route"], registry=r)
        self.deadlines = PCounter(
            "edge_deadlines",
            "Results by whether they met their deadline (SLO attainment = met / all)",
            ["model", "outcome"],
            registry=r,
        )
        self.errors = PCounter(
            "edge_inference_errors", "Results answered with an error", ["model"], registry=r
        )
        self.fallbacks = PCounter(
            "edge_fallbacks",
            "Remote calls that failed and were answered locally, by reason",
            ["model", "reason"],
            registry=r,
        )
        self.escalations = PCounter(
            "edge_cascade_escalations",
            "Low-confidence rows of the cascade policy by outcome (escalated: the cloud "
            "model answered; kept: the edge answer was published)",
            ["model", "outcome"],
            registry=r,
        )
        self.readings = PCounter(
            "edge_readings", "Readings accepted into a window", ["model"], registry=r
        )
        self.deadletter = PCounter("edge_deadletter", "Rejected payloads", ["reason"], registry=r)
        self.stream_evictions = PCounter(
            "edge_stream_evictions",
            "Idle sensor streams evicted to make room for new ones",
            ["model"],
            registry=r,
        )
        self.queue = Gauge("edge_queue_depth", "Requests waiting to batch", ["model"], registry=r)
        self.model_info = Gauge(
            "edge_model_info",
            "The model versions this agent serves (value 1)",
            ["model", "version"],
            registry=r,
        )
        self.breaker = Gauge(
            "edge_cloud_breaker_state",
            "Circuit breaker to the cloud tier: 1 for the current state",
            ["state"],
            registry=r,
        )
        self.cpu = Gauge("edge_node_cpu_percent", "Node CPU percent", registry=r)
        self.rss = Gauge("edge_process_rss_bytes", "Agent RSS", registry=r)
        self.store_degraded = Gauge(
            "edge_store_degraded",
            "1 while the SQLite store cannot commit (disk full or I/O error): results are "
            "held in memory and retried with backoff",
            registry=r,
        )
        self.store_dropped = PCounter(
            "edge_store_dropped",
            "Rows the SQLite store gave up on while degraded (memory bound reached; oldest "
            "results first, alerts last)",
            ["kind"],
            registry=r,
        )

    def served(self, versions: dict[str, int]) -> None:
        """Set ``edge_model_info`` to exactly the served ``model -> version`` pairs."""
        self.model_info.clear()
        for name, version in versions.items():
            self.model_info.labels(name, str(version)).set(1)

    def breaker_state(self, state: str) -> None:
        for s in ("closed", "open", "half-open", "none"):
            self.breaker.labels(s).set(1 if s == state else 0)


class Stats:
    """Everything the status API, the heartbeat and /metrics report about one model."""

    def __init__(
        self,
        window_s: int = 60,
        cap: int = 32768,
        clock: Callable[[], float] = time.monotonic,
        *,
        metrics: AgentMetrics | None = None,
        model: str = "",
    ) -> None:
        self.started = time.monotonic()
        self.model = model
        self.metrics = metrics = metrics or AgentMetrics()
        self.registry = metrics.registry
        self.lock = threading.Lock()  # results are recorded by the loop and worker threads
        self.readings = 0
        self.requests = 0
        self.duplicates = 0
        self.late = 0
        self.held = 0  # acknowledged readings that arrived ahead of missing ones
        self.reordered = 0  # missing readings that came while later ones were held
        self.gaps = 0
        self.missing = 0
        self.evicted = 0
        self.deadletter_by_reason: Counter[str] = Counter()
        self.results = 0
        self.inferences = 0
        self.errors = 0
        self.nan_outputs = 0
        self.deadline_met = 0
        self.offloaded = 0
        self.fallbacks = 0
        # Cascade: low-confidence rows answered by the cloud model / left with the edge answer.
        self.escalated = 0
        self.low_confidence_kept = 0
        self.routes: Counter[str] = Counter({"local": 0, "remote": 0, "hedge": 0, "shed": 0})
        self.reasons: Counter[str] = Counter()
        self.latency = LatencyWindow(window_s, cap, clock)
        self._model: str | None = None
        self.readings_rate = Rate()
        self.inference_rate = Rate()
        self._readings_exported = 0
        self.m_batch = metrics.batch.labels(model)
        self.m_errors = metrics.errors.labels(model)
        self.m_met = metrics.deadlines.labels(model, "met")
        self.m_missed = metrics.deadlines.labels(model, "missed")
        self.m_queue = metrics.queue.labels(model)
        self.m_readings = metrics.readings.labels(model)

    @property
    def deadletter_total(self) -> int:
        return sum(self.deadletter_by_reason.values())

    def export_readings(self) -> None:
        """Advance the readings counter (the MQTT thread counts in a plain int)."""
        n = self.readings
        if n > self._readings_exported:
            self.m_readings.inc(n - self._readings_exported)
            self._readings_exported = n

    def record_batch(
        self,
        route: str,
        latencies: np.ndarray,
        met: int,
        compute_s: float,
        errors: int = 0,
        nan: int = 0,
    ) -> None:
        with self.lock:
            self._record(route, latencies, met, compute_s, errors, nan)

    def _record(
        self, route: str, latencies: np.ndarray, met: int, compute_s: float, errors: int, nan: int
    ) -> None:
        n = len(latencies)
        self.nan_outputs += nan
        if route == "cloud":
            self.offloaded += n
        self.results += n
        self.inferences += n - errors
        self.errors += errors
        self.deadline_met += met
        self.latency.add(latencies)
        m = self.metrics
        self.m_batch.observe(n)
        m.compute.labels(self.model, route).observe(compute_s)
        m.results.labels(self.model, route).inc(n)
        m.latency.observe_many((self.model, route), latencies)
        if met:
            self.m_met.inc(met)
        if n - met:
            self.m_missed.inc(n - met)
        if errors:
            self.m_errors.inc(errors)

    def record_route(self, route: str, reason: str) -> None:
        with self.lock:  # the loop and the MQTT thread (inline batches) both route
            self.routes[route] += 1
            self.reasons[reason] += 1

    def record_fallback(self, reason: str) -> None:
        with self.lock:
            self.fallbacks += 1
            self.reasons[f"fallback:{reason}"] += 1
        self.metrics.fallbacks.labels(self.model, reason).inc()

    def record_escalation(self, outcome: str, n: int) -> None:
        """``n`` low-confidence rows were published: ``escalated`` to the cloud or ``kept``."""
        with self.lock:
            if outcome == "escalated":
                self.escalated += n
            else:
                self.low_confidence_kept += n
        self.metrics.escalations.labels(self.model, outcome).inc(n)

    def record_eviction(self, n: int) -> None:
        self.evicted += n
        self.metrics.stream_evictions.labels(self.model).inc(n)

    def model_changed(self, ref: str) -> None:
        """Start a fresh latency window when another model version becomes active.

        Results still in flight from the old version land in the new window; they are a
        batch or two, where the old count-based ring carried thousands.
        """
        with self.lock:
            if ref != self._model:
                self._model = ref
                self.latency.clear()

    def quantiles_ms(self, now: float | None = None) -> dict[str, float]:
        with self.lock:
            q = self.latency.quantiles([50, 95, 99], now)
        if q is None:
            return {"p50": 0.0, "p95": 0.0, "p99": 0.0}
        q = q * 1000.0
        return {
            "p50": round(float(q[0]), 3),
            "p95": round(float(q[1]), 3),
            "p99": round(float(q[2]), 3),
        }

    @property
    def slo_attainment(self) -> float:
        return self.deadline_met / self.results if self.results else 1.0

    @property
    def offload_share(self) -> float:
        return self.offloaded / self.results if self.results else 0.0

    @property
    def error_rate(self) -> float:
        return self.errors / self.results if self.results else 0.0
