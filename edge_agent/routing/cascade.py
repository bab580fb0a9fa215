"""Cascade escalation: low-confidence rows of a local batch get the cloud model's answer.

Sits between a plain local batch and ``complete`` (see :class:`~edge_agent.routing.policy.Cascade`).
After the edge model ran a classifier batch, rows whose top probability is below
``min_confidence`` are split off; the confident rest is published at once, from the
thread the batch finished on. The low rows go to the event loop, where the policy
decides whether the cloud can still answer them in time (usable remote, budget, a mean
RTT that fits the remaining slack). They are then published exactly once: with the
cloud's answer (route ``cloud``, reason ``escalated-low-confidence``) or, when the cloud
cannot take them or the call fails, with the edge answer (reason
``low-confidence-kept:<why>``). The cloud model must share the edge model's output name
and labels (``motion-edge``/``motion-cloud`` do): its answer is decoded with the edge
manifest; an answer without that output counts as a failed call.

Not escalated: anomaly models (a score has no confidence; a near-threshold band would
need its own calibration), failed batches, hedge twins, and batches that are already a
fallback or shed (``fallback:``/``shed:`` reasons: the cloud just failed or the deadline
has passed). Escalated rows are published after the confident rows of their batch, so
one stream's results can arrive out of ``seq`` order.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np

from edge_agent.model.slot import Loaded
from edge_agent.routing.batch import BatchDone
from edge_agent.routing.policy import Observed
from edge_agent.routing.remote import RemoteRunner
from models.errors import BackendError, EdgecloudError

log = logging.getLogger(__name__)

ESCALATED = "escalated-low-confidence"
KEPT = "low-confidence-kept"
_NOT_ESCALATED = ("fallback:", "shed:", "hedge")


class CascadeHost(Protocol):
    """What the escalator needs from its dispatcher."""

    policy: Any  # edge_agent.routing.policy.Cascade
    remote: RemoteRunner
    loop: asyncio.AbstractEventLoop

    def complete_now(self, done: BatchDone) -> None: ...

    def observe(
        self, now: float, n: int, deadline: float, queue_s: float | None = None
    ) -> Observed: ...

    def kick(self) -> None: ...


class Escalator:
    """The cascade's second stage for one dispatcher (``complete`` is thread-safe)."""

    def __init__(
        self,
        d: CascadeHost,
        min_confidence: float,
        on_outcome: Callable[[str, int], None] = lambda outcome, n: None,
    ) -> None:
        self.d = d
        self.min_confidence = min_confidence
        self.on_outcome = on_outcome  # ("escalated" | "kept", rows)
        self._lock = threading.Lock()
        self.pending = 0  # low-confidence batches handed over and not yet published

    def complete(self, done: BatchDone) -> None:
        """Publish ``done``'s confident rows now and hand its low-confidence rows on."""
        complete = self.d.complete_now
        low, top = self._low_rows(done)
        if low is None or not low.any():
            complete(done)
            return
        if not low.all():
            complete(_subset(done, ~low))
        rest = _subset(done, low)
        conf = float(np.nanmax(top[low])) if np.isfinite(top[low]).any() else 0.0
        if not self.d.remote.configured:  # nothing to ask: no loop hop needed
            self._keep(rest, f"{KEPT}:no-remote", release=False)
            return
        done.loaded.acquire()  # the low rows outlive the batch's own lease
        with self._lock:
            self.pending += 1
        try:
            self.d.loop.call_soon_threadsafe(self._decide, rest, conf)
        except RuntimeError:  # the loop is closing (shutdown): answer with what we have
            self._keep(rest, f"{KEPT}:stopping")

    def _low_rows(self, done: BatchDone) -> tuple[np.ndarray | None, np.ndarray]:
        """Mask of rows below ``min_confidence`` (None: this batch is not escalated)."""
        empty = np.empty(0)
        post = done.loaded.manifest.postprocessing
        if (
            post.kind != "classifier"
            or done.error is not None
            or done.outputs is None
            or done.route != "edge"
            or done.reason.startswith(_NOT_ESCALATED)
        ):
            return None, empty
        n = len(done.requests)
        try:
            probs = np.asarray(done.outputs[post.output], dtype=np.float64).reshape(n, -1)
        except (KeyError, ValueError):  # complete_batch reports the bad output
            return None, empty
        top = probs.max(axis=1)
        # NaN compares False: a row the edge could not score is low-confidence too.
        return ~(top >= self.min_confidence), top

    def _decide(self, rest: BatchDone, conf: float) -> None:
        """Event loop: escalate ``rest`` if the cloud can answer it in time."""
        d = self.d
        n = len(rest.requests)
        deadline = min(r.deadline for r in rest.requests)
        try:
            obs = dataclasses.replace(d.observe(time.monotonic(), n, deadline), confidence=conf)
            decision = d.policy.escalate(obs)
            route, reason = str(decision.route), decision.reason
        except Exception:  # a bug guard: the rows still get their edge answer
            log.exception("cascade escalation decision failed")
            route, reason = "local", f"{KEPT}:error"
        if route != "remote":
            self._keep(rest, reason)
            return
        d.remote.take(n)  # on the loop, like every other remote call
        d.remote.track(self._escalate(rest, deadline))

    async def _escalate(self, rest: BatchDone, deadline: float) -> None:
        d, loaded = self.d, rest.loaded
        reqs = rest.requests
        try:
            traced = next((r.trace for r in reqs if r.trace is not None), None)
            windows = np.stack([r.window for r in reqs])
            answer = await d.remote.call(loaded.manifest, windows, deadline, trace=traced)
            out = answer.outputs.get(loaded.manifest.postprocessing.output)
            if out is None or len(out) != len(reqs):
                name = answer.answered_by[0]
                raise BackendError(f"cloud model {name} answered without a matching output")
        except Exception as exc:  # the edge answer stands: every row still published once
            why = exc.reason if isinstance(exc, EdgecloudError) else type(exc).__name__
            self._keep(rest, f"{KEPT}:{why}")
            return
        except asyncio.CancelledError:  # the loop is going away: still one answer per row
            self._keep(rest, f"{KEPT}:cancelled")
            raise
        finally:
            d.remote.release()
            d.kick()
        cloud = BatchDone(reqs, loaded, "cloud", ESCALATED, rest.dispatched)
        cloud.outputs = answer.outputs
        cloud.answered_by = answer.answered_by
        cloud.call_span = answer.span
        # complete_batch reports a cloud batch's network time as network_s - compute_s:
        # the edge compute is part of this answer's latency, so both are carried.
        cloud.compute_s = rest.compute_s
        cloud.network_s = rest.compute_s + answer.seconds
        try:
            d.complete_now(cloud)
        finally:
            self.on_outcome("escalated", len(reqs))
            self._done(loaded)

    def _keep(self, rest: BatchDone, reason: str, *, release: bool = True) -> None:
        rest.reason = reason
        try:
            self.d.complete_now(rest)
        finally:
            self.on_outcome("kept", len(rest.requests))
            if release:
                self._done(rest.loaded)

    def _done(self, loaded: Loaded) -> None:
        loaded.release()
        with self._lock:
            self.pending -= 1


def _subset(done: BatchDone, mask: np.ndarray) -> BatchDone:
    """The rows of ``done`` selected by ``mask`` as a batch of their own."""
    idx = np.flatnonzero(mask)
    n = len(done.requests)
    reqs = [done.requests[i] for i in idx]
    part = BatchDone(reqs, done.loaded, done.route, done.reason, done.dispatched)
    part.compute_s = done.compute_s
    assert done.outputs is not None
    part.outputs = {
        k: (v[idx] if getattr(v, "ndim", 0) and len(v) == n else v) for k, v in done.outputs.items()
    }
    return part
