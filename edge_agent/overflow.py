"""Overflow: the newest requests go to the cloud when the local queue cannot make them.

The dispatcher decides for the batch at the head of its EDF heap, and that batch's local
ETA is only the wait for a worker: the oldest requests always look servable. When
requests arrive faster than the device serves them, the heap grows, every request behind
the head waits for all the batches ahead of it, and by the time one reaches the head its
deadline has passed; a late batch then runs wherever answers fastest, usually locally,
so the cloud is never used and the backlog never clears (measured: 10 agents x 100
sensors at 2.1x their device capacity, 0 % offloaded, p50 8 s).

:func:`offload_overflow` asks the policy about the batch at the *tail* (latest deadlines,
the most slack) with its honest local ETA: the worker wait plus every batch ahead of it.
If the policy sends that batch to the cloud (slo-aware: the device would be late, the
cloud fits), it leaves from the tail and the check repeats while remote slots are free.
The device keeps serving the oldest requests in EDF order; the cloud takes what the
device cannot reach in time. ``local-only`` never offloads here, ``threshold`` offloads
once the queue wait passes its threshold.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from edge_agent.dispatch import Dispatcher


def offload_overflow(d: Dispatcher, now: float) -> int:
    """Send tail batches to the cloud while the policy says so; returns batches sent."""
    heap = d._heap
    R = d._Route
    n = d.max_batch
    worker_wait = d.local_wait(now)  # nothing below starts local work
    per_batch = d.service.estimate(n) / max(1, d.workers)
    sent = 0
    while len(heap) > n and d.remote is not None and d.remote_busy < d._remote_limit:
        queue_s = worker_wait + math.ceil((len(heap) - n) / n) * per_batch
        if queue_s <= heap[0][0] - now:
            return sent  # even the oldest request's slack covers the whole queue
        if not sent:
            heap.sort()  # a sorted list is a valid heap, and popping its end keeps it one
        obs = d.observe(now, n, heap[-n][0], queue_s)
        decision = d.policy.decide(obs)
        if decision.route not in (R.REMOTE, R.HEDGE) or not obs.remote_available:
            return sent
        if not obs.budget_ok:
            return sent
        batch = [heap.pop()[2] for _ in range(n)][::-1]
        reason = f"overflow:{decision.reason}"
        d.on_route(str(R.REMOTE), reason)
        # REMOTE, not HEDGE: a local twin would queue behind the backlog it escapes.
        d._start(batch, R.REMOTE, reason, now)
        sent += 1
    return sent
