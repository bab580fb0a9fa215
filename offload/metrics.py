"""Prometheus metrics of the offload server, per model and version, in a private registry.

Two kinds of families share one registry and one ``/metrics`` text:

* Triton's own names (``nv_inference_*``, labels ``model`` and ``version``), so a Triton
  dashboard or alert works unchanged. They are read at scrape time from each version's
  :class:`~offload.statistics.ModelStatistics` (the same record the statistics RPC and
  ``/v2/models/{m}/stats`` answer from) and rendered exactly as Triton does: counters
  without a ``_total`` suffix, durations in microseconds.
* Our additions that Triton has no name for (``offload_*``): latency histograms for
  quantiles, batch sizes, expired and rejected requests, outcome by gRPC code, models ready.

Plus the standard ``process_*``/``python_*`` families. A private registry per server keeps
several servers in one process (tests, simulators) from clashing.
"""

from __future__ import annotations

import threading
import time
from bisect import bisect_left
from collections.abc import Iterable, Iterator, Sequence

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import Metric
from prometheus_client.utils import floatToGoString

from offload.batcher import BatchObserver
from offload.statistics import ModelStatistics, Snapshot

_LATENCY_BUCKETS = (
    0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0,
)  # fmt: skip
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)

#: Triton's counters: name -> (help, value of one version's snapshot). Types per Triton's
#: metrics documentation: all are counters; durations are cumulative microseconds.
TRITON_COUNTERS: dict[str, tuple[str, object]] = {
    "nv_inference_request_success": (
        "Number of successful inference requests, all batch sizes",
        lambda s: s.success.count,
    ),
    "nv_inference_count": (
        "Number of inferences performed (does not include cached requests)",
        lambda s: s.inference_count,
    ),
    "nv_inference_exec_count": (
        "Number of model executions performed (does not include cached requests)",
        lambda s: s.execution_count,
    ),
    "nv_inference_request_duration_us": (
        "Cumulative inference request duration in microseconds (includes cached requests)",
        lambda s: s.success.ns // 1000,
    ),
    "nv_inference_queue_duration_us": (
        "Cumulative inference queuing duration in microseconds (includes cached requests)",
        lambda s: s.queue.ns // 1000,
    ),
    "nv_inference_compute_input_duration_us": (
        "Cumulative compute input duration in microseconds (does not include cached requests)",
        lambda s: s.compute_input.ns // 1000,
    ),
    "nv_inference_compute_infer_duration_us": (
        "Cumulative compute inference duration in microseconds (does not include cached requests)",
        lambda s: s.compute_infer.ns // 1000,
    ),
    "nv_inference_compute_output_duration_us": (
        "Cumulative inference compute output duration in microseconds (does not include "
        "cached requests)",
        lambda s: s.compute_output.ns // 1000,
    ),
}
FAILURE = "nv_inference_request_failure"
TRITON_FAMILIES = (*TRITON_COUNTERS, FAILURE)


class TritonCollector:
    """Scrape-time view of every loaded version's statistics under Triton's names."""

    def __init__(self) -> None:
        self._models: dict[tuple[str, str], ModelStatistics] = {}

    def add(self, stats: ModelStatistics) -> None:
        self._models[(stats.name, stats.version)] = stats

    def remove(self, name: str, version: str) -> None:
        self._models.pop((name, version), None)

    def collect(self) -> Iterator[Metric]:
        snaps = [s.snapshot() for s in list(self._models.values())]
        for name, (doc, value) in TRITON_COUNTERS.items():
            family = Metric(name, doc, "counter")
            for s in snaps:
                family.add_sample(name, {"model": s.name, "version": s.version}, value(s))  # type: ignore[operator]
            yield family
        failure = Metric(FAILURE, "Number of failed inference requests, all batch sizes", "counter")
        for s in snaps:
            for reason, count in sorted(s.fail_by_reason.items()):
                labels = {"model": s.name, "reason": reason, "version": s.version}
                failure.add_sample(FAILURE, labels, count)
        yield failure


class HistogramChild:
    """One label set of a :class:`FastHistogram`: a count per bucket and a sum, one lock.

    prometheus_client's histogram child costs ~2 us per observation (a check, then a
    locked increment of the sum and another of the bucket, in Python); four of them per
    request were the largest share of the offload server's own per-request time after
    the model. Here an observation is a bisect and two additions under one lock; the
    cumulative buckets are added up at scrape time instead.
    """

    __slots__ = ("_bounds", "_counts", "_lock", "_sum", "created")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self._bounds = bounds  # ends with +Inf, so every value has a bucket
        self._counts = [0] * len(bounds)
        self._sum = 0.0
        self._lock = threading.Lock()
        self.created = time.time()

    def observe(self, value: float) -> None:
        i = bisect_left(self._bounds, value)  # the first bound >= value: Prometheus' "le"
        with self._lock:
            self._counts[i] += 1
            self._sum += value

    def snapshot(self) -> tuple[list[int], float]:
        with self._lock:
            return list(self._counts), self._sum


class FastHistogram:
    """A labelled histogram family rendered exactly as prometheus_client's ``Histogram``
    (``_bucket``/``_count``/``_sum``/``_created`` samples), with cheaper observations."""

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str],
        buckets: Sequence[float],
        registry: CollectorRegistry,
    ) -> None:
        self.name = name
        self._doc = documentation
        self._labelnames = tuple(labelnames)
        self._bounds = (*(float(b) for b in buckets), float("inf"))
        self._le = tuple(floatToGoString(b) for b in self._bounds)
        self._children: dict[tuple[str, ...], HistogramChild] = {}
        self._lock = threading.Lock()
        registry.register(self)

    def labels(self, *values: str) -> HistogramChild:
        """The child of one label set (the same object for the same values, as
        prometheus_client's: a reloaded version keeps counting where it stopped)."""
        with self._lock:
            child = self._children.get(values)
            if child is None:
                child = self._children[values] = HistogramChild(self._bounds)
            return child

    def describe(self) -> list[Metric]:
        return [Metric(self.name, self._doc, "histogram")]

    def collect(self) -> list[Metric]:
        family = Metric(self.name, self._doc, "histogram")
        with self._lock:
            children = list(self._children.items())
        for values, child in children:
            labels = dict(zip(self._labelnames, values, strict=True))
            counts, total = child.snapshot()
            seen = 0.0
            for le, count in zip(self._le, counts, strict=True):
                seen += count
                family.add_sample(f"{self.name}_bucket", {**labels, "le": le}, seen)
            family.add_sample(f"{self.name}_count", labels, seen)
            family.add_sample(f"{self.name}_sum", labels, total)
            family.add_sample(f"{self.name}_created", labels, child.created)
        return [family]


def _escape(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _triton_text(families: Iterable[Metric]) -> str:
    """Triton's exposition: ``# TYPE nv_x counter`` and samples named ``nv_x`` (no _total)."""
    out: list[str] = []
    for fam in families:
        out.append(f"# HELP {fam.name} {fam.documentation}\n# TYPE {fam.name} {fam.type}\n")
        for sample in fam.samples:
            labels = ",".join(f'{k}="{_escape(v)}"' for k, v in sample.labels.items())
            out.append(f"{sample.name}{{{labels}}} {int(sample.value)}\n")
    return "".join(out)


class _Families:
    """A registry-shaped view of some families, for prometheus_client's renderer."""

    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> list[Metric]:
        return self._families


class ServerMetrics:
    """All metric families of one server."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.triton = TritonCollector()
        self.registry.register(self.triton)
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        labels = ("model", "version")
        self.request_seconds = FastHistogram(
            "offload_request_duration_seconds",
            "Time from a successful request's arrival to its response, server side",
            labels,
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.queue_seconds = FastHistogram(
            "offload_queue_duration_seconds",
            "Time a request waited in the batcher queue before compute started",
            labels,
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.compute_seconds = FastHistogram(
            "offload_compute_duration_seconds",
            "Time one batch spent in the backend",
            labels,
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_size = FastHistogram(
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
            "Requests refused before reaching a model (unknown model, admission, auth), by code",
            ("code",),
            registry=self.registry,
        )
        self.models_ready = Gauge(
            "offload_models_ready", "Model versions loaded and ready", registry=self.registry
        )
        self.bytes_in_flight = Gauge(
            "offload_request_bytes_in_flight",
            "Bytes of inference requests admitted and not yet answered",
            registry=self.registry,
        )

    def for_model(self, name: str, version: int) -> ModelMetrics:
        model = ModelMetrics(self, name, str(version))
        self.triton.add(model.statistics)
        return model

    def forget(self, name: str, version: int) -> None:
        """An unloaded version leaves the Triton families (as Triton does)."""
        self.triton.remove(name, str(version))

    def exposition(self) -> bytes:
        """The ``/metrics`` text: Triton's families first, in Triton's format, then ours."""
        triton: list[Metric] = []
        rest: list[Metric] = []
        for family in self.registry.collect():
            (triton if family.name in TRITON_FAMILIES else rest).append(family)
        return _triton_text(triton).encode() + generate_latest(_Families(rest))  # type: ignore[arg-type]


class ModelMetrics(BatchObserver):
    """Pre-resolved label children and the statistics of one model version.

    Also the batcher's observer: compute threads report queue and compute times here.
    """

    def __init__(self, metrics: ServerMetrics, name: str, version: str) -> None:
        self._metrics = metrics
        self._labels = (name, version)
        self.statistics = ModelStatistics(name, version)
        self.request = metrics.request_seconds.labels(name, version)
        self._queue = metrics.queue_seconds.labels(name, version)
        self._compute = metrics.compute_seconds.labels(name, version)
        self._batch = metrics.batch_size.labels(name, version)
        self._expired = metrics.expired.labels(name, version)
        self._ok = metrics.requests.labels(name, version, "OK")

    def batch(
        self, rows: int, requests: int, input_s: float, infer_s: float, output_s: float
    ) -> None:
        self._batch.observe(rows)
        self._compute.observe(input_s + infer_s + output_s)
        self.statistics.executed(rows, requests, input_s, infer_s, output_s)

    def queued(self, seconds: float) -> None:
        self._queue.observe(seconds)
        self.statistics.queued(seconds)

    def expired(self) -> None:
        self._expired.inc()

    def ok(self, seconds: float) -> None:
        self.request.observe(seconds)
        self._ok.inc()
        self.statistics.succeeded(seconds)

    def failed(self, code: str, seconds: float) -> None:
        self._metrics.requests.labels(*self._labels, code).inc()
        self.statistics.failed(seconds, _REASONS.get(code, "OTHER"))

    def snapshot(self) -> Snapshot:
        return self.statistics.snapshot()


#: gRPC code name -> Triton's failure reason.
_REASONS = {
    "RESOURCE_EXHAUSTED": "REJECTED",
    "UNAVAILABLE": "REJECTED",
    "DEADLINE_EXCEEDED": "CANCELED",
    "CANCELLED": "CANCELED",
    "INTERNAL": "BACKEND",
}
