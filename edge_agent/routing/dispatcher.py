"""Earliest-deadline-first micro-batching and routing of inference requests.

Runs on the event loop. Requests wait in a heap ordered by deadline; a batch leaves when
it is full, when its oldest request has waited ``max_wait``, or when waiting longer would
eat into its deadline. Each batch gets one routing decision from the policy:

* LOCAL / SHED: run on the local backend in the inference executor (a local batch only
  leaves when a worker is free, so batches grow under load instead of queueing in the
  executor); SHED results are flagged ``reason="shed"`` - answered, never dropped.
* REMOTE: the cloud tier (:class:`edge_agent.routing.remote.RemoteRunner`); on any failure,
  or a deadline the remote cannot make, the batch falls back to local execution (counted).
* HEDGE: remote and local race; the first answer is published, the other discarded.

Under the ``cascade`` policy a plain local batch of a classifier passes through
:class:`edge_agent.routing.cascade.Escalator` before it is published: its low-confidence rows
may still be answered by the cloud model.

Deadlines come from the sensor's timestamp by default (:mod:`edge_agent.ingest.deadlines`), so
a request that waited in a broker backlog is already late here and is routed as such.

Overflow from the tail: the decision for the head batch sees only the wait for a worker,
so the oldest requests always look servable. When requests arrive faster than the device
serves them, every request behind the head waits for all the batches ahead of it, and by
the time one reaches the head its deadline has passed (measured: 10 agents x 100 sensors
at 2.1x their device capacity offloaded 0 %, p50 8 s). So before each kick, when even the
oldest request's slack does not cover the whole queue, the policy is asked about the
*tail* batch (latest deadlines) with its honest local ETA (worker wait plus every batch
ahead of it); if it says REMOTE or HEDGE, that batch goes to the cloud (as REMOTE: a local
twin would queue behind the backlog it escapes), reason ``overflow:<policy reason>``,
and the check repeats while remote slots are free.

Every request handed to :meth:`Dispatcher.add` completes exactly once through ``complete``.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any

from edge_agent.model.slot import ModelSlot
from edge_agent.routing.batch import BatchDone, Request, run_and_complete
from edge_agent.routing.cascade import Escalator
from edge_agent.routing.local_work import LocalWork
from edge_agent.routing.policy import Observed, Route
from edge_agent.routing.queue import EdfQueue
from edge_agent.routing.remote import RemoteRunner
from edge_agent.routing.rtt import RemoteRtt
from models.manifest import Manifest

log = logging.getLogger(__name__)


class Dispatcher:
    """EDF batcher + router. All methods run on the event loop (``try_inline``: the MQTT
    thread, and only while the loop has nothing queued)."""

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
        self.models = models
        self._executor = executor
        self._complete = complete
        self.max_batch = max_batch
        self.max_wait = max_wait_s
        self.workers = workers
        self.policy = policy
        self.service = service
        self._pressure = pressure
        self.inline_max_s = inline_max_s
        self.queue = EdfQueue()
        self.local_busy = 0
        self.local_work = LocalWork()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self.loop = asyncio.get_running_loop()

        def target(manifest: Manifest) -> tuple[str, int | None]:
            # The same name and version on the cloud tier unless a cloud model is named.
            return remote_model() if remote_model is not None else (manifest.name, manifest.version)

        self.remote = RemoteRunner(
            remote,
            target=target,
            limit=remote_concurrency,
            budget=budget,
            rtt=remote_rtt,
            loop=self.loop,
        )
        self.on_route: Callable[[str, str], None] = lambda route, reason: None
        self.on_fallback: Callable[[str], None] = lambda reason: None
        # Plain local batches publish through the cascade's second stage when it is on.
        self.cascade: Escalator | None = None
        self._complete_local = complete
        self._on_escalation = on_escalation
        self.use_policy(policy)

    def use_policy(self, policy: Any) -> None:
        """Route the next batches with ``policy`` (config twin: on the loop). Batches
        already running finish as they were decided; an escalator with escalations in
        flight is kept so :meth:`idle` still waits for them."""
        self.policy = policy
        if getattr(policy, "name", None) == "cascade":
            if self.cascade is None:
                self.cascade = Escalator(self, policy.min_confidence, self._on_escalation)
            else:
                self.cascade.min_confidence = policy.min_confidence
            self._complete_local = self.cascade.complete
        else:
            self._complete_local = self._complete

    @property
    def rtt(self) -> RemoteRtt:
        return self.remote.rtt

    @property
    def remote_busy(self) -> int:
        return self.remote.busy

    @property
    def tracer(self) -> Any:
        return self.remote.tracer

    @tracer.setter
    def tracer(self, tracer: Any) -> None:
        self.remote.tracer = tracer

    def complete_now(self, done: BatchDone) -> None:
        """Publish ``done`` as it is (no cascade stage); the caller keeps its lease."""
        self._complete(done)

    @property
    def depth(self) -> int:
        return len(self.queue)

    def add(self, requests: list[Request]) -> None:
        self.queue.push_many(requests)
        self.kick()

    def observe(
        self, now: float, n: int, deadline: float, queue_s: float | None = None
    ) -> Observed:
        """``Observed`` for a batch of ``n`` due at ``deadline`` (``queue_s``: local wait)."""
        est = self.service.estimate(n)
        backlog = self.local_wait(now) if queue_s is None else queue_s
        pressure = self._pressure()
        remote = self.remote
        rtt, p95 = remote.estimate()
        return Observed(
            now=now,
            deadline=deadline,
            batch_size=n,
            local_queue_s=backlog,
            local_service_s=est * (1.0 + pressure),
            remote_configured=remote.configured,
            remote_available=remote.available,
            remote_rtt_s=rtt,
            remote_p95_s=p95,
            budget_ok=remote.budget_ok(n),
            node_pressure=pressure,
        )

    _observe = observe  # the older private name (tests)

    def local_wait(self, now: float) -> float:
        """Estimated wait (s) until a local worker is free (``routing/local_work.py``)."""
        return self.local_work.wait(now, self.workers, self.service.estimate)

    def kick(self) -> None:
        queue = self.queue
        if self.remote.configured and len(queue) > self.max_batch:
            self._overflow(time.monotonic())
        while queue:
            now = time.monotonic()
            n = min(len(queue), self.max_batch)
            first = queue.head
            due_at = min(
                first.arrival + self.max_wait, first.deadline - self.service.estimate(n) * 2.0
            )
            if n < self.max_batch and now < due_at:
                self._arm(due_at)
                return
            local_free = self.local_busy < self.workers
            remote_free = self.remote.free
            if not local_free and not remote_free:
                return
            obs = self.observe(now, n, first.deadline)
            decision = self.policy.decide(obs)
            route, reason = self._settle(obs, decision, remote_free)
            if route == Route.LOCAL and not local_free:
                return  # wait for a worker; the batch keeps growing meanwhile
            batch = queue.pop_head(n)
            self.on_route(str(decision.route), reason)
            self._start(batch, route, reason, now)

    def _overflow(self, now: float) -> int:
        """Send tail batches to the cloud while the policy says so (module docstring);
        returns the batches sent. ``local-only`` never offloads here, ``threshold`` once
        the queue wait passes its threshold."""
        queue, n = self.queue, self.max_batch
        worker_wait = self.local_wait(now)  # nothing below starts local work
        per_batch = self.service.estimate(n) / max(1, self.workers)
        sent = 0
        while len(queue) > n and self.remote.free:
            queue_s = worker_wait + math.ceil((len(queue) - n) / n) * per_batch
            if queue_s <= queue.head.deadline - now:
                return sent  # even the oldest request's slack covers the whole queue
            obs = self.observe(now, n, queue.tail_deadline(n), queue_s)
            decision = self.policy.decide(obs)
            if decision.route not in (Route.REMOTE, Route.HEDGE) or not obs.remote_available:
                return sent
            if not obs.budget_ok:
                return sent
            batch = queue.pop_tail(n)
            reason = f"overflow:{decision.reason}"
            self.on_route(str(Route.REMOTE), reason)
            # REMOTE, not HEDGE: a local twin would queue behind the backlog it escapes.
            self._start(batch, Route.REMOTE, reason, now)
            sent += 1
        return sent

    def _settle(self, obs: Observed, decision: Any, remote_free: bool) -> tuple[Route, str]:
        """(route to run, reason) for a decision, given whether a remote slot is free."""
        route, reason = decision.route, decision.reason
        if route == Route.SHED:
            # Late whichever way it goes: answer as soon as possible, flagged "shed".
            reason = f"shed:{reason}"
            fast_remote = (
                obs.remote_available and obs.budget_ok and obs.remote_rtt_s <= obs.local_eta_s
            )
            route = Route.REMOTE if remote_free and fast_remote else Route.LOCAL
        if route in (Route.REMOTE, Route.HEDGE) and not remote_free:
            route = Route.LOCAL
        return route, reason

    def try_inline(self, batch: list[Request]) -> bool:
        """Run ``batch`` right here (the MQTT thread) if that is the policy's local choice.

        Cheap models gain more from skipping three thread hand-offs (loop, executor, back)
        than from overlapping compute with reading; on a busy node every hand-off waits
        for the scheduler. Declines (False) when the batch is expensive, when the loop has
        a backlog (EDF order), or when the policy wants the cloud.
        """
        n = len(batch)
        if self.inline_max_s <= 0 or self.queue or self.local_busy:
            return False
        est = self.service.estimate(n)
        if est > self.inline_max_s:
            return False
        now = time.monotonic()
        deadline = min(r.deadline for r in batch)
        obs = self.observe(now, n, deadline)
        decision = self.policy.decide(obs)
        if decision.route not in (Route.LOCAL, Route.SHED):
            return False
        # A shed batch (already late, e.g. it sat in a broker backlog) is answered the
        # fastest way: here, unless the cloud would be quicker (then the loop sends it).
        route, reason = self._settle(obs, decision, self.remote.free)
        if route != Route.LOCAL:
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

    def _start(self, batch: list[Request], route: Route, reason: str, now: float) -> None:
        loaded = self.models.lease()
        if route == Route.LOCAL:
            self.run_local(BatchDone(batch, loaded, "edge", reason, now))
            return
        self.remote.start(
            batch,
            loaded,
            hedge=route == Route.HEDGE,
            reason=reason,
            now=now,
            run_local=self.run_local,
            finish=self.finish,
            on_fallback=self.on_fallback,
            settled=self.kick,
        )

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

    def remote_target(self, manifest: Manifest) -> tuple[str, int | None]:
        """The cloud model (name, version) that answers for local ``manifest``."""
        return self.remote.target(manifest)

    def finish(self, done: BatchDone) -> None:
        try:
            self._complete(done)
        finally:
            done.loaded.release()

    @property
    def idle(self) -> bool:
        """Nothing queued, running, or waiting for a cascade escalation."""
        pending = self.cascade.pending if self.cascade is not None else 0
        return not (self.queue or self.local_busy or self.remote.busy or pending)

    async def drain(self, within_s: float = 10.0) -> None:
        """Wait (at most ``within_s``) until every queued and running request completed."""
        end = time.monotonic() + within_s
        while not self.idle and time.monotonic() < end:
            self.kick()
            await asyncio.sleep(0.01)
