"""What the routing policy is told about the cloud's round trip before it has been measured.

The offload client's ``RemoteStats`` read 0.0 until its first successful call; handed to a
policy as-is, an unmeasured cloud looks instant, so a fresh agent would route its first
batches there on no evidence. :class:`RemoteRtt` substitutes a configured prior
(``--cloud-rtt-prior-ms``) while there are no samples, blends prior and measurement while
there are fewer than ``min_samples``, and uses the measurement alone after that.

Because a pessimistic prior can keep a policy from ever choosing the cloud (and so from
ever measuring it), :meth:`RemoteRtt.probe` sends single zero windows to the cloud model
off the hot path until ``min_samples`` round trips are known. The same trap exists after
that: round trips measured while the node was overloaded (ten agents starting on two
cores measured 180 ms over a 40 ms WAN) make the cloud look too slow, no batch goes
there, and the estimate never moves. So the probe goes on at ``refresh_s`` whenever no
call has succeeded for that long.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from shell.logs import Outage

log = logging.getLogger(__name__)


class RemoteRtt:
    """Round-trip estimates (seconds) of one offload client, prior-backed until measured."""

    def __init__(self, prior_s: float, min_samples: int) -> None:
        self.prior_s = prior_s
        self.min_samples = max(0, min_samples)
        self.samples = 0  # successful calls this agent made (batches and probes)
        self.last_ok = 0.0  # monotonic time of the last successful call

    @property
    def measured(self) -> bool:
        return self.samples >= self.min_samples

    def observed(self) -> None:
        """Count one successful remote call (its RTT went into the client's stats)."""
        self.samples += 1
        self.last_ok = time.monotonic()

    def estimate(self, stats: Any) -> tuple[float, float]:
        """(rtt, p95) for ``Observed``: the prior, a blend, or the client's measurement."""
        if stats is None:
            return self.prior_s, self.prior_s
        # ``calls`` counts attempts; a measurement exists only once one succeeded.
        if self.samples == 0 or stats.calls == 0 or stats.rtt_ewma_s <= 0.0:
            return self.prior_s, self.prior_s
        rtt, p95 = stats.rtt_ewma_s, max(stats.rtt_p95_s, stats.rtt_ewma_s)
        if self.measured:
            return rtt, p95
        w = self.samples / self.min_samples
        prior = (1.0 - w) * self.prior_s
        return prior + w * rtt, prior + w * p95

    async def probe(
        self,
        call: Callable[[float], Awaitable[object]],
        available: Callable[[], bool],
        *,
        interval_s: float = 1.0,
        timeout_s: float = 2.0,
        refresh_s: float = 0.0,
    ) -> None:
        """Call ``call(deadline)`` until ``min_samples`` calls succeeded, then (with
        ``refresh_s`` > 0) whenever no call succeeded for ``refresh_s``; until cancelled.

        Failures (cloud down, model missing) are retried every ``interval_s`` and logged
        like every unreachable dependency (:class:`shell.logs.Outage`: one WARNING per
        outage); meanwhile the prior (or the last measurement) stands.
        """
        outage = Outage(log, "cloud tier")
        while True:
            if self.measured:
                if refresh_s <= 0:
                    return
                idle = time.monotonic() - self.last_ok
                if idle < refresh_s:
                    await asyncio.sleep(refresh_s - idle)
                    continue
            if available():
                try:
                    await call(time.monotonic() + timeout_s)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    outage.failed(f"RTT probe: {exc}", interval_s)
                    await asyncio.sleep(interval_s)
                    continue
                outage.recovered()
                self.observed()
                continue
            await asyncio.sleep(interval_s)
