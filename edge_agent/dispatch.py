"""Earliest-deadline-first micro-batching and routing of inference requests.

Runs on the event loop. Requests wait in a heap ordered by deadline; a batch leaves when
it is full, when its oldest request has waited ``max_wait``, or when waiting longer would
eat into its deadline. Each batch gets one routing decision from the policy:

* LOCAL / SHED: run on the local backend in the inference executor (a local batch only
  leaves when a worker is free, so batches grow under load instead of queueing in the
  executor); SHED results are flagged ``reason="shed"`` - answered, never dropped.
* REMOTE: the offload client (:mod:`edge_agent.remote_exec`); on any failure, or a
  deadline the remote cannot make, the batch falls back to local execution (counted).
* HEDGE: remote and local race; the first answer is published, the other discarded.

Under the ``cascade`` policy a plain local batch of a classifier passes through
:class:`edge_agent.cascade.Escalator` before it is published: its low-confidence rows
may still be answered by the cloud model.

Deadlines come from the sensor's timestamp by default (:mod:`edge_agent.deadlines`), so
a request that waited in a broker backlog is already late here and is routed as such.

Every request handed to :meth:`Dispatcher.add` completes exactly once through ``complete``.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import time
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any

from edge_agent.batch import BatchDone, Request, run_and_complete
from edge_agent.cascade import Escalator
from edge_agent.local_work import LocalWork
from edge_agent.overflow import offload_overflow
from edge_agent.registry import ModelSlot
from edge_agent.remote_exec import start_remote
from edge_agent.remote_rtt import RemoteRtt

log = logging.getLogger(__name__)


class Dispatcher:
    """EDF batcher + router. All methods run on the event loop."""

    def __init__(
        self,
        models: ModelSlot,
        executor: Executor,
        complete: Callable[[BatchDone], None],
        *,
        max_batch: int,
        max_wait_s: float,
        workers: int,
        policy: Any,
        service: Any,
        remote: Any = None,
        remote_model: Callable[[], tuple[str, int | None]] | None = None,
        budget: Any = None,
        remote_concurrency: int = 8,
        inline_max_s: float = 0.0,
        pressure: Callable[[], float] = lambda: 0.0,
        remote_rtt: RemoteRtt | None = None,
        on_escalation: Callable[[str, int], None] = lambda outcome, n: None,
    ) -> None:
        from offload.policy import Observed, Route

        self._Observed, self._Route = Observed, Route
        self.models = models
        self._executor = executor
        self._complete = complete
        self.max_batch = max_batch
        self.max_wait = max_wait_s
        self.workers = workers
        self.policy = policy
        self.service = service
        self.remote = remote
        self.rtt = remote_rtt or RemoteRtt(prior_s=0.05, min_samples=3)
        self._remote_model = remote_model
        self.budget = budget
        self._remote_limit = remote_concurrency
        self._pressure = pressure
        self.inline_max_s = inline_max_s
        self._heap: list[tuple[float, int, Request]] = []
        self._tie = itertools.count()
        self.local_busy = 0
        self.remote_busy = 0
        self.local_work = LocalWork()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self.loop = asyncio.get_running_loop()
        self._tasks: set[asyncio.Task[None]] = set()
        self.tracer: Any = None  # offload.tracing.Tracer with --otlp-endpoint
        self.on_route: Callable[[str, str], None] = lambda route, reason: None
        self.on_fallback: Callable[[str], None] = lambda reason: None
        # Plain local batches publish through the cascade's second stage when it is on.
        self.cascade: Escalator | None = None
        self._complete_local = complete
        if getattr(policy, "name", None) == "cascade":
            self.cascade = Escalator(self, policy.min_confidence, on_escalation)
            self._complete_local = self.cascade.complete

    def complete_now(self, done: BatchDone) -> None:
        """Publish ``done`` as it is (no cascade stage); the caller keeps its lease."""
        self._complete(done)

    def track(self, task: asyncio.Task[None]) -> None:
        """Keep a reference to a background task until it finishes."""
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @property
    def depth(self) -> int:
        return len(self._heap)

    def add(self, requests: list[Request]) -> None:
        heap, tie = self._heap, self._tie
        for r in requests:
            heapq.heappush(heap, (r.deadline, next(tie), r))
        self.kick()

    def observe(self, now: float, n: int, deadline: float, queue_s: float | None = None) -> Any:
        """``Observed`` for a batch of ``n`` due at ``deadline`` (``queue_s``: local wait)."""
        est = self.service.estimate(n)
        backlog = self.local_wait(now) if queue_s is None else queue_s
        pressure = self._pressure()
        remote = self.remote
        rtt, p95 = self.rtt.estimate(remote.stats if remote is not None else None)
        return self._Observed(
            now=now,
            deadline=deadline,
            batch_size=n,
            local_queue_s=backlog,
            local_service_s=est * (1.0 + pressure),
            remote_configured=remote is not None,
            remote_available=bool(
                remote is not None and remote.available and self.remote_busy < self._remote_limit
            ),
            remote_rtt_s=rtt,
            remote_p95_s=p95,
            budget_ok=self.budget.peek(n, 0) if self.budget is not None else True,
            node_pressure=pressure,
        )

    _observe = observe  # the older private name (tests)

    def local_wait(self, now: float) -> float:
        """Estimated wait (s) until a local worker is free (see :mod:`edge_agent.local_work`)."""
        return self.local_work.wait(now, self.workers, self.service.estimate)

    def kick(self) -> None:
        heap = self._heap
        if self.remote is not None and len(heap) > self.max_batch:
            offload_overflow(self, time.monotonic())
        while heap:
            now = time.monotonic()
            n = min(len(heap), self.max_batch)
            first = heap[0][2]
            due_at = min(
                first.arrival + self.max_wait, first.deadline - self.service.estimate(n) * 2.0
            )
            if n < self.max_batch and now < due_at:
                self._arm(due_at)
                return
            local_free = self.local_busy < self.workers
            remote_free = self.remote is not None and self.remote_busy < self._remote_limit
            if not local_free and not remote_free:
                return
            obs = self.observe(now, n, first.deadline)
            decision = self.policy.decide(obs)
            route, reason = self._settle(obs, decision, remote_free)
            if route == self._Route.LOCAL and not local_free:
                return  # wait for a worker; the batch keeps growing meanwhile
            batch = [heapq.heappop(heap)[2] for _ in range(n)]
            self.on_route(str(decision.route), reason)
            self._start(batch, route, reason, now)

    def _settle(self, obs: Any, decision: Any, remote_free: bool) -> tuple[Any, str]:
        """(route to run, reason) for a decision, given whether a remote slot is free."""
        R = self._Route
        route, reason = decision.route, decision.reason
        if route == R.SHED:
            # Late whichever way it goes: answer as soon as possible, flagged "shed".
            reason = f"shed:{reason}"
            fast_remote = (
                obs.remote_available and obs.budget_ok and obs.remote_rtt_s <= obs.local_eta_s
            )
            route = R.REMOTE if remote_free and fast_remote else R.LOCAL
        if route in (R.REMOTE, R.HEDGE) and not remote_free:
            route = R.LOCAL
        return route, reason

    def try_inline(self, batch: list[Request]) -> bool:
        """Run ``batch`` right here (the MQTT thread) if that is the policy's local choice.

        Cheap models gain more from skipping three thread hand-offs (loop, executor, back)
        than from overlapping compute with reading; on a busy node every hand-off waits
        for the scheduler. Declines (False) when the batch is expensive, when the loop has
        a backlog (EDF order), or when the policy wants the cloud.
        """
        n = len(batch)
        if self.inline_max_s <= 0 or self._heap or self.local_busy:
            return False
        est = self.service.estimate(n)
        if est > self.inline_max_s:
            return False
        now = time.monotonic()
        deadline = min(r.deadline for r in batch)
        obs = self.observe(now, n, deadline)
        decision = self.policy.decide(obs)
        if decision.route not in (self._Route.LOCAL, self._Route.SHED):
            return False
        # A shed batch (already late, e.g. it sat in a broker backlog) is answered the
        # fastest way: here, unless the cloud would be quicker (then the loop sends it).
        remote_free = self.remote is not None and self.remote_busy < self._remote_limit
        route, reason = self._settle(obs, decision, remote_free)
        if route != self._Route.LOCAL:
            return False
        loaded = self.models.lease()
        done = BatchDone(batch, loaded, "edge", reason, now)
        try:
            run_and_complete(done, self._complete_local)
        finally:
            loaded.release()
        if done.error is None:
            self.service.observe(n, done.compute_s)
        self.on_route(str(decision.route), reason)
        return True

    def _arm(self, at: float) -> None:
        if self._timer is not None:
            if self._timer_at <= at:
                return
            self._timer.cancel()
        self._timer_at = at
        self._timer = self.loop.call_later(max(0.0, at - time.monotonic()), self._fire)

    def _fire(self) -> None:
        self._timer = None
        self.kick()

    def _start(self, batch: list[Request], route: Any, reason: str, now: float) -> None:
        R = self._Route
        loaded = self.models.lease()
        if route == R.LOCAL:
            self.run_local(BatchDone(batch, loaded, "edge", reason, now))
            return
        start_remote(self, batch, loaded, hedge=route == R.HEDGE, reason=reason, now=now)

    def run_local(self, done: BatchDone, race: asyncio.Future[BatchDone] | None = None) -> None:
        self.local_busy += 1
        # Results of a plain local batch are published from the worker thread itself: one
        # thread hop less than returning to the loop first (the loop only does bookkeeping).
        complete = self._complete_local if race is None else None
        token, job = self.local_work.submit(done, lambda: run_and_complete(done, complete))
        fut = self.loop.run_in_executor(self._executor, job)

        def finished(f: asyncio.Future[None]) -> None:
            self.local_busy -= 1
            self.local_work.finished(token)
            if f.cancelled() or f.exception() is not None:
                log.error("local batch failed to complete", exc_info=f.exception())
            elif done.error is None and done.outputs is not None:
                self.service.observe(len(done.requests), done.compute_s)
            if race is None:
                done.loaded.release()
            elif not race.done():
                race.set_result(done)
            else:
                done.loaded.release()  # the remote twin answered first; discard
            self.kick()

        fut.add_done_callback(finished)

    def remote_target(self, manifest: Any) -> tuple[str, int | None]:
        """The cloud model (name, version) that answers for local ``manifest``."""
        if self._remote_model is not None:
            return self._remote_model()
        return manifest.name, manifest.version

    def finish(self, done: BatchDone) -> None:
        try:
            self._complete(done)
        finally:
            done.loaded.release()

    @property
    def idle(self) -> bool:
        """Nothing queued, running, or waiting for a cascade escalation."""
        pending = self.cascade.pending if self.cascade is not None else 0
        return not (self._heap or self.local_busy or self.remote_busy or pending)

    async def drain(self, within_s: float = 10.0) -> None:
        """Wait (at most ``within_s``) until every queued and running request completed."""
        end = time.monotonic() + within_s
        while not self.idle and time.monotonic() < end:
            self.kick()
            await asyncio.sleep(0.01)
