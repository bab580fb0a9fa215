"""Publishing a finished batch: one result per request, alerts, counters, side outputs.

Runs where the batch finished (a worker thread for plain local batches, the MQTT thread
for inline ones, the event loop for remote and hedged ones); it only touches the core's
publisher, its counters (under ``Stats.lock``) and its alert ring.
"""

from __future__ import annotations

import json
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from edge_agent.ops.stats import Stats
from edge_agent.output.results import Outputs, alert_for, batch_results, error_output, model_part
from edge_agent.routing.batch import BatchDone, Request
from offload.tracing import CLIENT, SERVER, Tracer

if TYPE_CHECKING:
    from edge_agent.ingest.windows import StreamWindow

log = logging.getLogger(__name__)


class Publisher(Protocol):
    """What the core needs from a transport: fire-and-forget publishes."""

    def publish(
        self, topic: str, payload: str | bytes, qos: int = 0, retain: bool = False
    ) -> None: ...

    def publish_many(self, messages: list[tuple[str, str]], qos: int = 0) -> None:
        """One batch's results at once (QoS 0 ones leave as pre-encoded frames)."""


class CompletionHost(Protocol):
    """What publishing a batch reads of a model's core (``edge_agent.ingest.core.AgentCore``):
    where results go, the counters, the alert ring and the side outputs."""

    agent_id: str
    publisher: Publisher
    result_qos: int
    threshold: float | None
    stats: Stats
    tracer: Tracer | None
    alerts: deque[dict[str, Any]]
    on_results: Callable[[list[tuple[Request, str]], BatchDone], None] | None
    on_alert: Callable[[dict[str, Any]], None] | None


def complete_batch(core: CompletionHost, done: BatchDone) -> None:
    """Publish one result per request of ``done`` and record the batch."""
    reqs = done.requests
    n = len(reqs)
    manifest = done.loaded.manifest
    now = time.monotonic()  # one clock read per batch: results leave together
    queue_ms = [(done.dispatched - r.arrival) * 1000.0 for r in reqs]
    compute_ms = done.compute_s * 1000.0
    network_ms = max(0.0, done.network_s * 1000.0 - compute_ms) if done.route == "cloud" else 0.0
    mpart = model_part(manifest, done.answered_by)
    if done.outputs is not None:
        try:
            outs: Outputs | None = Outputs(manifest, done.outputs, n, core.threshold)
            jsons = outs.json  # type: ignore[union-attr]
        except Exception as exc:  # wrong output count/shape from a backend: answer anyway
            log.warning("bad model output: %s", exc)
            outs, jsons, done.error = None, [error_output("bad-output")] * n, "bad-output"
    else:
        outs, jsons = None, [error_output(done.error or "error")] * n
    bodies, lat, met = batch_results(done, jsons, mpart, now, queue_ms, compute_ms, network_ms)
    produced = list(zip(reqs, bodies, strict=True))
    core.publisher.publish_many(
        [(r.stream.result_topic, body) for r, body in produced], core.result_qos
    )
    if outs is not None:
        for i, r in enumerate(reqs):
            _check_alert(core, r.stream, r, outs, i)
    errors = n if done.error else 0
    nan = outs.nan if outs is not None else 0
    core.stats.record_batch(done.route, lat, met, done.compute_s, errors, nan)
    if core.tracer is not None:
        _trace(core.tracer, done, now)
    if core.on_results is not None:
        core.on_results(produced, done)


def _trace(tracer: Tracer, done: BatchDone, now: float) -> None:
    """Spans of the traced requests of ``done``: the request from its latency origin to
    its result, and its stages (transit to the agent, waiting to batch, the inference or
    the offload call, whose cloud-side span the server recorded under the same trace)."""
    n = len(done.requests)
    for r in done.requests:
        root = r.trace
        if root is None:
            continue
        st = r.stream
        tracer.record(
            "edge-agent request",
            root,
            None,
            r.origin,
            now,
            kind=SERVER,
            stream=st.topic,
            seq=r.seq,
            route=done.route,
            reason=done.reason,
            deadline_met=now <= r.deadline,
            model=done.loaded.manifest.ref,
        )
        tracer.record("ingest", tracer.child(root), root, r.origin, r.arrival)
        tracer.record("batch", tracer.child(root), root, r.arrival, done.dispatched, size=n)
        call = done.call_span
        if done.route == "cloud":
            # The span whose context went to the cloud tier when this request's trace was
            # the one sent; a span of its own otherwise (its batch shared one call).
            ctx = call[0] if call and call[0].trace_id == root.trace_id else tracer.child(root)
            start, end = (call[1], call[2]) if call else (done.dispatched, now)
            tracer.record("offload call", ctx, root, start, end, kind=CLIENT)
        else:
            end = done.dispatched + done.compute_s
            tracer.record("local inference", tracer.child(root), root, done.dispatched, end)


def _check_alert(core: CompletionHost, st: StreamWindow, r: Request, outs: Outputs, i: int) -> None:
    alert = alert_for(st, r.seq, outs, i, core.agent_id)
    if alert is None:
        return
    core.alerts.append(alert)
    core.publisher.publish(st.alert_topic, json.dumps(alert), 1, False)
    if core.on_alert is not None:
        core.on_alert(alert)
