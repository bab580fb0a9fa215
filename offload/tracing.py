"""Tracing, off by default: W3C trace context and a small OTLP/HTTP (JSON) span exporter.

A slow result is followed from the sensor through the edge agent, the offload call and
the cloud tier: the agent records a trace per sampled request (root span from the
reading's latency origin to the result, children for waiting to batch, local inference
or the offload call) and sends the offload call's span context to the cloud tier in the
gRPC metadata ``traceparent`` (W3C Trace Context); the cloud tier records its inference
as a child of it. Results carry the ``trace_id``.

Why not the OpenTelemetry SDK: the agent's hot path handles tens of thousands of readings
a second and must pay nothing when tracing is off, and the images stay small; spans here
are plain tuples appended to a bounded deque, and one background thread posts them to an
OTLP/HTTP collector (``POST {endpoint}/v1/traces``, JSON encoding of the OTLP protobuf,
which every OpenTelemetry collector accepts). Spans beyond ``max_queue`` are dropped and
counted, never blocking the caller.
"""

from __future__ import annotations

import json
import logging
import os
import random
import threading
import time
import urllib.request
from collections import deque
from typing import NamedTuple

log = logging.getLogger(__name__)

INTERNAL, SERVER, CLIENT = 1, 2, 3  # OTLP SpanKind values


class SpanContext(NamedTuple):
    trace_id: str  # 32 lowercase hex digits
    span_id: str  # 16 lowercase hex digits


def new_id(nbytes: int) -> str:
    return os.urandom(nbytes).hex()


def traceparent(ctx: SpanContext) -> str:
    """The W3C ``traceparent`` header value (version 00, sampled)."""
    return f"00-{ctx.trace_id}-{ctx.span_id}-01"


def parse_traceparent(value: str | None) -> SpanContext | None:
    """``00-<trace>-<span>-<flags>`` -> SpanContext; None for anything malformed or
    unsampled (a caller's bad header never breaks a request)."""
    if not value or len(value) > 128:
        return None
    parts = value.strip().split("-")
    if len(parts) != 4 or len(parts[1]) != 32 or len(parts[2]) != 16 or len(parts[3]) != 2:
        return None
    version, trace_id, span_id, flags = parts
    try:
        if version == "ff" or int(trace_id, 16) == 0 or int(span_id, 16) == 0:
            return None
        sampled = int(flags, 16) & 1
    except ValueError:
        return None
    return SpanContext(trace_id.lower(), span_id.lower()) if sampled else None


class Span(NamedTuple):
    name: str
    ctx: SpanContext
    parent_span_id: str | None
    start_ns: int
    end_ns: int
    kind: int
    attributes: dict[str, str | int | float | bool]


def _value(v: str | int | float | bool) -> dict[str, object]:
    if isinstance(v, bool):
        return {"boolValue": v}
    if isinstance(v, int):
        return {"intValue": str(v)}
    if isinstance(v, float):
        return {"doubleValue": v}
    return {"stringValue": str(v)}


class Tracer:
    """Records spans of one process and exports them to an OTLP/HTTP endpoint."""

    def __init__(
        self,
        endpoint: str,
        service: str,
        *,
        sample_ratio: float = 1.0,
        flush_s: float = 1.0,
        max_queue: int = 20_000,
        attributes: dict[str, str] | None = None,
    ) -> None:
        base = endpoint.rstrip("/")
        self.url = base if base.endswith("/v1/traces") else f"{base}/v1/traces"
        self.service = service
        self.sample_ratio = sample_ratio
        self.flush_s = flush_s
        self._queue: deque[Span] = deque()
        self._max = max_queue
        self.dropped = 0
        self.exported = 0
        self.failed = 0
        self._resource = [
            {"key": k, "value": _value(v)}
            for k, v in {"service.name": service, **(attributes or {})}.items()
        ]
        # Monotonic seconds -> unix nanoseconds (spans are timed on the monotonic clock).
        self._offset_ns = time.time_ns() - time.monotonic_ns()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="otlp-export", daemon=True)
        self._thread.start()

    # -- any thread -----------------------------------------------------------------------
    def sample(self) -> SpanContext | None:
        """A new root context for a request, or None when this one is not sampled."""
        if self.sample_ratio < 1.0 and random.random() >= self.sample_ratio:
            return None
        return SpanContext(new_id(16), new_id(8))

    def child(self, parent: SpanContext) -> SpanContext:
        return SpanContext(parent.trace_id, new_id(8))

    def unix_ns(self, monotonic_s: float) -> int:
        return int(monotonic_s * 1e9) + self._offset_ns

    def record(
        self,
        name: str,
        ctx: SpanContext,
        parent: SpanContext | None,
        start_s: float,
        end_s: float,
        *,
        kind: int = INTERNAL,
        **attributes: str | int | float | bool,
    ) -> None:
        """One finished span, timed in monotonic seconds (lock-free append)."""
        if len(self._queue) >= self._max:
            self.dropped += 1
            return
        self._queue.append(
            Span(
                name,
                ctx,
                parent.span_id if parent is not None else None,
                self.unix_ns(start_s),
                self.unix_ns(max(end_s, start_s)),
                kind,
                attributes,
            )
        )

    # -- export thread --------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.wait(self.flush_s):
            self.flush()
        self.flush()

    def flush(self) -> None:
        q, spans = self._queue, []
        while q:
            spans.append(q.popleft())
        if not spans:
            return
        body = json.dumps(self.document(spans)).encode()
        request = urllib.request.Request(
            self.url, data=body, headers={"Content-Type": "application/json"}, method="POST"
        )
        try:
            with urllib.request.urlopen(request, timeout=5) as resp:
                resp.read()
            self.exported += len(spans)
        except OSError as exc:  # a collector being away must never affect inference
            self.failed += len(spans)
            log.debug("OTLP export of %d spans to %s failed: %s", len(spans), self.url, exc)

    def document(self, spans: list[Span]) -> dict[str, object]:
        """The OTLP/JSON ``ExportTraceServiceRequest`` for ``spans``."""
        return {
            "resourceSpans": [
                {
                    "resource": {"attributes": self._resource},
                    "scopeSpans": [
                        {
                            "scope": {"name": "edgecloud"},
                            "spans": [
                                {
                                    "traceId": s.ctx.trace_id,
                                    "spanId": s.ctx.span_id,
                                    **(
                                        {"parentSpanId": s.parent_span_id}
                                        if s.parent_span_id
                                        else {}
                                    ),
                                    "name": s.name,
                                    "kind": s.kind,
                                    "startTimeUnixNano": str(s.start_ns),
                                    "endTimeUnixNano": str(s.end_ns),
                                    "attributes": [
                                        {"key": k, "value": _value(v)}
                                        for k, v in s.attributes.items()
                                    ],
                                }
                                for s in spans
                            ],
                        }
                    ],
                }
            ]
        }

    def close(self) -> None:
        self._stop.set()
        self._thread.join(6)
