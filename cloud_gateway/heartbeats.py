"""The fleet's recent past: per agent, the last 10 minutes of heartbeat metrics, in memory.

:class:`~cloud_gateway.fleet.Fleet` keeps only each agent's last heartbeat; the fleet page
also shows how each agent did over the last 10 minutes (SLO attainment, offload share,
the model versions it served) and links to the agent's own dashboard. Heartbeats carry
cumulative counters (``metrics.inferences``, ``errors``, ``slo_attainment``,
``offload_share`` since the agent started), so a window's figures are the weighted
differences of its first and last heartbeat, restarted agents (counters that went back)
counted from zero. Memory is bounded: ``max_points`` heartbeats per agent, ``max_agents``
agents; nothing is persisted (a restarted gateway starts a new window).

Only heartbeats the fleet accepted (validated, enrolled) are recorded. ``dashboard_url``
is optional in the heartbeat and kept only when it is a plain http(s) URL, because the
page turns it into a link.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlsplit

from aiohttp import web
from pydantic import BaseModel, Field

from cloud_gateway.schemas import StatusReport


class _WithFleet(Protocol):
    """What the route handler needs of the gateway (not the Gateway class itself: this
    module sits below the fleet, and naming the Gateway here would be an import cycle)."""

    fleet: Any


log = logging.getLogger(__name__)

WINDOW_S = 600.0
MAX_POINTS = 1200  # per agent: a 0.5 s heartbeat fills the window
MAX_AGENTS = 10_000
SPARK_BUCKETS = 60  # points per sparkline (10 s each over the window)
MAX_URL = 300


def clean_url(value: Any) -> str | None:
    """``value`` if it is a plain http(s) URL with a host, else None."""
    if not isinstance(value, str) or len(value) > MAX_URL or any(c in value for c in "\"'<> "):
        return None
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    return value


@dataclass(slots=True)
class _Point:
    t: float
    results: int  # inferences + errors: what slo_attainment and offload_share divide by
    met: float  # deadline met, reconstructed: slo_attainment * results
    offloaded: float
    versions: dict[str, int]


def _point(report: StatusReport, now: float) -> _Point:
    m = report.metrics
    results = m.inferences + m.errors
    versions = {
        name: entry.version for name, entry in report.models.items() if entry.version is not None
    }
    return _Point(now, results, m.slo_attainment * results, m.offload_share * results, versions)


def _deltas(points: list[_Point]) -> list[tuple[float, int, float, float]]:
    """(t, results, met, offloaded) between consecutive heartbeats; a restart restarts
    the counters, so the later heartbeat counts from zero."""
    out = []
    for a, b in itertools.pairwise(points):
        if b.results >= a.results:
            out.append((b.t, b.results - a.results, b.met - a.met, b.offloaded - a.offloaded))
        else:
            out.append((b.t, b.results, b.met, b.offloaded))
    return out


class AgentHistory(BaseModel):
    """One agent's last ``window_s`` as the fleet page shows it."""

    agent_id: str
    dashboard_url: str | None = Field(description="the agent's own dashboard, if it reported one")
    window_s: float
    heartbeats: int = Field(description="heartbeats in the window")
    results: int = Field(description="results the agent produced in the window")
    slo_attainment: float | None = Field(description="over the window; None without results")
    offload_share: float | None = Field(description="over the window; None without results")
    versions: list[dict[str, Any]] = Field(
        description="model versions served: {model, version, since} per change, oldest first"
    )
    spark: list[dict[str, Any]] = Field(
        description=f"up to {SPARK_BUCKETS} buckets: {{t, results, slo_attainment, offload_share}}"
    )


class HeartbeatHistory:
    """Per agent, a bounded ring of recent heartbeats (gateway event loop only)."""

    def __init__(
        self,
        window_s: float = WINDOW_S,
        max_points: int = MAX_POINTS,
        max_agents: int = MAX_AGENTS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.window_s = window_s
        self.max_points = max_points
        self.max_agents = max_agents
        self.clock = clock
        self._points: dict[str, deque[_Point]] = {}
        self._urls: dict[str, str | None] = {}
        self.bad_urls = 0  # dashboard_url values that were not plain http(s) URLs

    def __len__(self) -> int:
        return len(self._points)

    def record(self, report: StatusReport, now: float) -> None:
        """Keep one accepted heartbeat (a last will without metrics is not a data point)."""
        agent = report.agent_id
        extra = report.model_extra or {}
        if "dashboard_url" in extra:
            url = clean_url(extra["dashboard_url"])
            if url is None and extra["dashboard_url"] is not None:
                self.bad_urls += 1  # the heartbeat still counts; only the link is dropped
                if self._urls.get(agent, "") is not None:  # once per change, not per beat
                    log.warning("agent %s reported an unusable dashboard_url", agent[:64])
            self._urls[agent] = url
        if not report.online or not report.metrics.model_fields_set:
            return  # a last will, or a heartbeat without numbers: not a data point
        ring = self._points.get(agent)
        if ring is None:
            if len(self._points) >= self.max_agents:
                oldest = min(self._points, key=lambda a: self._points[a][-1].t)
                del self._points[oldest]
                self._urls.pop(oldest, None)
            ring = self._points[agent] = deque(maxlen=self.max_points)
        ring.append(_point(report, now))
        while ring and ring[0].t < now - self.window_s - 60.0:  # one point before the window
            ring.popleft()

    def view(self, agent_id: str, now: float | None = None) -> AgentHistory:
        now = self.clock() if now is None else now
        start = now - self.window_s
        ring = list(self._points.get(agent_id, ()))
        # The last heartbeat before the window is the baseline its first delta starts from.
        first = max((i for i, p in enumerate(ring) if p.t <= start), default=0)
        points = [p for i, p in enumerate(ring) if i >= first]
        deltas = [d for d in _deltas(points) if d[0] > start]
        results = sum(d[1] for d in deltas)
        versions: list[dict[str, Any]] = []
        seen: dict[str, int] = {}
        for p in points:
            for model, version in sorted(p.versions.items()):
                if seen.get(model) != version:
                    seen[model] = version
                    versions.append({"model": model, "version": version, "since": max(p.t, start)})
        return AgentHistory(
            agent_id=agent_id,
            dashboard_url=self._urls.get(agent_id),
            window_s=self.window_s,
            heartbeats=sum(1 for p in points if p.t > start),
            results=results,
            slo_attainment=_ratio(sum(d[2] for d in deltas), results),
            offload_share=_ratio(sum(d[3] for d in deltas), results),
            versions=versions,
            spark=self._spark(deltas, start),
        )

    def _spark(self, deltas: list[tuple[float, int, float, float]], start: float) -> list[dict]:
        width = self.window_s / SPARK_BUCKETS
        buckets: dict[int, list[float]] = {}
        for t, n, met, off in deltas:
            b = buckets.setdefault(min(int((t - start) // width), SPARK_BUCKETS - 1), [0, 0.0, 0.0])
            b[0] += n
            b[1] += met
            b[2] += off
        return [
            {
                "t": round(start + (k + 1) * width, 3),
                "results": int(n),
                "slo_attainment": _ratio(met, int(n)),
                "offload_share": _ratio(off, int(n)),
            }
            for k, (n, met, off) in sorted(buckets.items())
        ]

    def view_all(self, agent_ids: list[str]) -> list[AgentHistory]:
        now = self.clock()
        return [self.view(a, now) for a in agent_ids]


def _ratio(part: float, whole: int) -> float | None:
    if whole <= 0:
        return None
    return round(min(1.0, max(0.0, part / whole)), 6)


async def fleet_history(request: web.Request, gw: _WithFleet) -> web.StreamResponse:
    """Every known agent's last 10 minutes (GET /api/v1/fleet-history)."""
    ids = [row["agent_id"] for row in gw.fleet.all()]
    return web.json_response([h.model_dump() for h in gw.fleet.history.view_all(ids)])
