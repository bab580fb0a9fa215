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

from edge_agent.batch import BatchDone, Request
from edge_agent.registry import Loaded
from models.errors import EdgecloudError

if TYPE_CHECKING:
    from edge_agent.dispatch import Dispatcher


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
        x = np.stack([r.window for r in batch])
        t0 = time.perf_counter()
        call = d.remote.infer(name, version, {loaded.manifest.inputs[0].name: x}, deadline)
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
        done.outputs = outputs
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
