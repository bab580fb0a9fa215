"""One inference request, one finished batch, and the job that runs a batch locally."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from edge_agent.model.slot import Loaded
from models.errors import EdgecloudError
from models.servable import to_model_input
from offload.tracing import SpanContext

log = logging.getLogger(__name__)


class Request:
    """One window waiting for inference.


    ``arrival`` (monotonic) is when the agent read the window's last reading; ``origin``
    (monotonic, <= arrival) is when its latency clock started, i.e. the sensor's publish
    time where that is trusted (:mod:`edge_agent.ingest.deadlines`); ``deadline`` is
    ``origin + slo``. Batching waits count from arrival, reported latency from origin.
    """

    __slots__ = ("arrival", "deadline", "origin", "seq", "stream", "trace", "ts", "window")

    def __init__(
        self,
        stream: Any,
        window: np.ndarray,
        seq: int,
        ts: float,
        arrival: float,
        deadline: float,
        origin: float | None = None,
    ) -> None:
        self.stream = stream
        self.window = window
        self.seq = seq
        self.ts = ts
        self.arrival = arrival
        self.deadline = deadline
        self.origin = arrival if origin is None else origin
        self.trace: SpanContext | None = None  # the request's root span when it is traced


class BatchDone:
    """What ``complete`` receives for one finished batch."""

    __slots__ = (
        "answered_by",
        "call_span",
        "compute_s",
        "dispatched",
        "error",
        "loaded",
        "network_s",
        "outputs",
        "reason",
        "requests",
        "route",
        "superseded",
    )

    def __init__(
        self, requests: list[Request], loaded: Loaded, route: str, reason: str, dispatched: float
    ) -> None:
        self.requests = requests
        self.loaded = loaded
        self.route = route
        self.reason = reason
        self.dispatched = dispatched
        self.outputs: dict[str, np.ndarray] | None = None
        self.error: str | None = None
        self.compute_s = 0.0
        self.network_s = 0.0
        # (model, version) of a cloud answer, as the offload server reported it; results
        # name the model that answered, not the local one the batch was leased with.
        self.answered_by: tuple[str, int | None] | None = None
        # Set on the loop thread when a hedge's cloud twin answered first: a local twin
        # still waiting for a worker then skips its compute (device time is the scarce
        # resource during a burst). A plain bool: the worker only ever reads it.
        self.superseded = False
        # The offload call's (span, start, end) when a traced request went to the cloud.
        self.call_span: tuple[SpanContext, float, float] | None = None


def answered_by(meta: dict[str, str], name: str, version: int | None) -> tuple[str, int | None]:
    """(model, version) of a cloud answer: the server's word, else what was asked for."""
    served = meta.get("version", "")
    return meta.get("model") or name, int(served) if served.isdigit() else version


def run_and_complete(done: BatchDone, complete: Callable[[BatchDone], None] | None) -> None:
    """Executor job: infer one batch, then (for plain local batches) publish its results."""
    loaded = done.loaded
    if done.superseded:
        return
    try:
        spec = loaded.manifest.inputs[0]
        x = to_model_input(np.stack([r.window for r in done.requests]), spec.shape)
        t0 = time.perf_counter()
        done.outputs = loaded.backend.infer({spec.name: x})
        done.compute_s = time.perf_counter() - t0
    except Exception as exc:  # every request still gets exactly one (error) result
        done.error = exc.reason if isinstance(exc, EdgecloudError) else type(exc).__name__
        log.warning("local inference failed: %s", exc)
    if complete is not None:
        complete(done)
