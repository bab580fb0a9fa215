"""Calls to the cloud tier: one :meth:`RemoteRunner.call` for every use, and the way a
batch routed REMOTE or HEDGE is run to exactly one answer per request.

The runner owns everything about remote work of one served model: the offload client's
concurrency slots (``busy`` < ``limit``), the offload budget, the background tasks, the
RTT estimate (:class:`~edge_agent.routing.rtt.RemoteRtt`) and the trace context sent with
a call. Offloaded batches, hedges, cascade escalations and the RTT probe all go through
:meth:`call`, so a round trip is counted, timed and traced the same way everywhere.

:meth:`start` runs a batch on the cloud alone (REMOTE) or racing a local twin (HEDGE):
every request completes exactly once, with the cloud's answer, the local twin's
(whichever is first; the other is discarded), or, when the call fails or cannot make the
deadline, a local run flagged ``fallback:<reason>``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from edge_agent.model.slot import Loaded
from edge_agent.routing.batch import BatchDone, Request, answered_by
from edge_agent.routing.rtt import RemoteRtt
from models.errors import EdgecloudError
from models.manifest import Manifest
from models.servable import to_model_input
from offload.tracing import SpanContext, Tracer, traceparent


@dataclass(slots=True)
class Answer:
    """What one successful call returned."""

    outputs: dict[str, np.ndarray]
    answered_by: tuple[str, int | None]
    seconds: float  # the call's wall time (perf_counter)
    span: tuple[SpanContext, float, float] | None  # (call span, start, end) when traced


class RemoteRunner:
    """Remote work of one dispatcher (event loop only)."""

    def __init__(
        self,
        client: Any,
        *,
        target: Callable[[Manifest], tuple[str, int | None]],
        limit: int,
        budget: Any = None,
        rtt: RemoteRtt | None = None,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.client = client  # offload.client.OffloadClient, or None without --cloud
        self._target = target
        self.limit = limit
        self.budget = budget
        self.rtt = rtt or RemoteRtt(prior_s=0.05, min_samples=3)
        self.loop = loop
        self.busy = 0
        self.tracer: Tracer | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    # -- state the router reads -----------------------------------------------------------
    @property
    def configured(self) -> bool:
        return self.client is not None

    @property
    def free(self) -> bool:
        """A concurrency slot is free (whatever the breaker says)."""
        return self.client is not None and self.busy < self.limit

    @property
    def available(self) -> bool:
        """A call may start now: a free slot and a breaker that lets it through."""
        return self.free and bool(self.client.available)

    def budget_ok(self, n: int) -> bool:
        return self.budget.peek(n, 0) if self.budget is not None else True

    def estimate(self) -> tuple[float, float]:
        """(rtt, p95) seconds for the policy: the prior until measured."""
        return self.rtt.estimate(self.client.stats if self.client is not None else None)

    def target(self, manifest: Manifest) -> tuple[str, int | None]:
        """The cloud model (name, version) that answers for local ``manifest``."""
        return self._target(manifest)

    # -- the one way to call --------------------------------------------------------------
    def take(self, n: int) -> None:
        """Claim a slot (and budget) for a call about to start: counted now, not when its
        task runs, so the dispatcher's next decision already sees it."""
        if self.budget is not None:
            self.budget.try_take(n, 0)
        self.busy += 1

    def release(self) -> None:
        self.busy -= 1

    def track(self, coro: Any) -> asyncio.Task[None]:
        """Run ``coro`` as a background task kept alive until it finishes."""
        task: asyncio.Task[None] = self.loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def call(
        self,
        manifest: Manifest,
        windows: np.ndarray,
        deadline: float,
        *,
        trace: SpanContext | None = None,
        count: bool = True,
    ) -> Answer:
        """Infer ``windows`` (batch, window, channels) on the cloud model for ``manifest``
        before ``deadline`` (monotonic). Raises what the client raises; a success counts
        as an RTT sample unless ``count`` is False (the probe counts its own)."""
        name, version = self.target(manifest)
        spec = manifest.inputs[0]
        x = to_model_input(windows, spec.shape)
        call_ctx = self.tracer.child(trace) if self.tracer is not None and trace else None
        meta: dict[str, str] = {}
        start, t0 = time.monotonic(), time.perf_counter()
        outputs = await self.client.infer(
            name,
            version,
            {spec.name: x},
            deadline,
            answered_by=meta,
            traceparent=traceparent(call_ctx) if call_ctx is not None else None,
        )
        seconds = time.perf_counter() - t0
        if count:
            self.rtt.observed()
        span = (call_ctx, start, time.monotonic()) if call_ctx is not None else None
        return Answer(outputs, answered_by(meta, name, version), seconds, span)

    # -- a batch routed REMOTE or HEDGE ---------------------------------------------------
    def start(
        self,
        batch: list[Request],
        loaded: Loaded,
        *,
        hedge: bool,
        reason: str,
        now: float,
        run_local: Callable[[BatchDone, asyncio.Future[BatchDone] | None], None],
        finish: Callable[[BatchDone], None],
        on_fallback: Callable[[str], None],
        settled: Callable[[], None],
    ) -> None:
        """Run ``batch`` remotely in the background; ``settled`` runs once the slot is free."""
        self.take(len(batch))
        deadline = min(r.deadline for r in batch)
        if reason.startswith("shed:"):
            # Already late (often from a backlog before the agent): the cloud gets one SLO
            # from now to answer; the expired deadline would fail the call at once and
            # push the batch onto the local device, the collapse the shed tried to avoid.
            deadline = max(deadline, now + max(r.deadline - r.origin for r in batch))
        self.track(
            self._run(
                batch,
                loaded,
                hedge,
                reason,
                now,
                deadline,
                run_local,
                finish,
                on_fallback,
                settled,
            )
        )

    async def _run(
        self,
        batch: list[Request],
        loaded: Loaded,
        hedge: bool,
        reason: str,
        now: float,
        deadline: float,
        run_local: Callable[[BatchDone, asyncio.Future[BatchDone] | None], None],
        finish: Callable[[BatchDone], None],
        on_fallback: Callable[[str], None],
        settled: Callable[[], None],
    ) -> None:
        race: asyncio.Future[BatchDone] = self.loop.create_future()
        twin: BatchDone | None = None
        if hedge:
            loaded.acquire()
            twin = BatchDone(batch, loaded, "edge", "hedge-local", now)
            run_local(twin, race)
        done = BatchDone(batch, loaded, "cloud", reason, now)
        try:
            traced = next((r.trace for r in batch if r.trace is not None), None)
            windows = np.stack([r.window for r in batch])
            call = self.call(loaded.manifest, windows, deadline, trace=traced)
            if hedge:
                rtask = asyncio.ensure_future(call)
                racing: list[asyncio.Future[Any]] = [rtask, race]
                await asyncio.wait(racing, return_when=asyncio.FIRST_COMPLETED)
                if race.done() and not rtask.done():
                    rtask.add_done_callback(lambda t: t.cancelled() or t.exception())
                    rtask.cancel()
                    finish(race.result())
                    loaded.release()
                    return
                answer = await rtask
            else:
                answer = await call
            done.network_s = answer.seconds
            done.outputs = answer.outputs
            done.answered_by = answer.answered_by
            done.call_span = answer.span
            if twin is not None and not race.done():
                twin.superseded = True  # not started yet: it never computes
                race.set_result(done)  # the local twin finishes later and is discarded
            elif hedge:
                finish(race.result())
                loaded.release()
                return
            finish(done)
        except Exception as exc:  # any remote failure falls back: no request is lost
            why = exc.reason if isinstance(exc, EdgecloudError) else type(exc).__name__
            on_fallback(why)
            if hedge:
                finish(await race)
                loaded.release()
            else:
                run_local(BatchDone(batch, loaded, "edge", f"fallback:{why}", now), None)
        finally:
            self.release()
            settled()
