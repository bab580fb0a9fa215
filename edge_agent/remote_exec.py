"""Running one batch on the cloud tier, alone (REMOTE) or racing a local twin (HEDGE).

Every request of the batch completes exactly once: with the cloud's answer, with the
local twin's (hedge: whichever answers first; the other is discarded), or, when the call
fails or cannot make the deadline, with a local run flagged ``fallback:<reason>``.
The caller has already counted the call in ``dispatcher.remote_busy``.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

import numpy as np

from edge_agent.batch import BatchDone, Request, answered_by
from edge_agent.registry import Loaded
from models.errors import EdgecloudError
from models.servable import to_model_input
from offload.tracing import traceparent

if TYPE_CHECKING:
    from edge_agent.dispatch import Dispatcher


def start_remote(
    d: Dispatcher, batch: list[Request], loaded: Loaded, *, hedge: bool, reason: str, now: float
) -> None:
    """Launch :func:`run_remote` for a batch the dispatcher routed to the cloud (loop only)."""
    if d.budget is not None:
        d.budget.try_take(len(batch), 0)
    d.remote_busy += 1  # now, not when the task starts: kick() may launch more
    deadline = min(r.deadline for r in batch)
    if reason.startswith("shed:"):
        # Already late (often from a backlog before the agent): the cloud gets one SLO
        # from now to answer; the expired deadline would fail the call at once and
        # push the batch onto the local device, the collapse the shed tried to avoid.
        deadline = max(deadline, now + max(r.deadline - r.origin for r in batch))
    task = d.loop.create_task(
        run_remote(d, batch, loaded, hedge=hedge, reason=reason, now=now, deadline=deadline)
    )
    d.track(task)


async def run_remote(
    d: Dispatcher,
    batch: list[Request],
    loaded: Loaded,
    *,
    hedge: bool,
    reason: str,
    now: float,
    deadline: float,
) -> None:
    """Offload ``batch`` through ``d.remote`` with an absolute monotonic call ``deadline``.

    See the module docstring for the outcomes.
    """
    race: asyncio.Future[BatchDone] = asyncio.get_running_loop().create_future()
    twin: BatchDone | None = None
    if hedge:
        loaded.acquire()
        twin = BatchDone(batch, loaded, "edge", "hedge-local", now)
        d.run_local(twin, race)
    done = BatchDone(batch, loaded, "cloud", reason, now)
    try:
        name, version = d.remote_target(loaded.manifest)
        spec = loaded.manifest.inputs[0]
        x = to_model_input(np.stack([r.window for r in batch]), spec.shape)
        t0 = time.perf_counter()
        meta: dict[str, str] = {}
        traced = next((r.trace for r in batch if r.trace is not None), None)
        call_ctx = d.tracer.child(traced) if d.tracer is not None and traced else None
        call_start = time.monotonic()
        call = d.remote.infer(
            name,
            version,
            {spec.name: x},
            deadline,
            answered_by=meta,
            traceparent=traceparent(call_ctx) if call_ctx is not None else None,
        )
        if hedge:
            rtask = asyncio.ensure_future(call)
            await asyncio.wait([rtask, race], return_when=asyncio.FIRST_COMPLETED)
            if race.done() and not rtask.done():
                rtask.add_done_callback(lambda t: t.cancelled() or t.exception())
                rtask.cancel()
                d.finish(race.result())
                loaded.release()
                return
            outputs = await rtask
        else:
            outputs = await call
        done.network_s = time.perf_counter() - t0
        if call_ctx is not None:
            done.call_span = (call_ctx, call_start, time.monotonic())
        done.outputs = outputs
        done.answered_by = answered_by(meta, name, version)
        d.rtt.observed()
        if twin is not None and not race.done():
            twin.superseded = True  # not started yet: it never computes
            race.set_result(done)  # the local twin finishes later and is discarded
        elif hedge:
            d.finish(race.result())
            loaded.release()
            return
        d.finish(done)
    except Exception as exc:  # any remote failure falls back: no request is lost
        why = exc.reason if isinstance(exc, EdgecloudError) else type(exc).__name__
        d.on_fallback(why)
        if hedge:
            d.finish(await race)
            loaded.release()
        else:
            d.run_local(BatchDone(batch, loaded, "edge", f"fallback:{why}", now))
    finally:
        d.remote_busy -= 1
        d.kick()
