"""The gateway's Prometheus metrics, served at ``/metrics`` from a private registry.

Private (not prometheus_client's global REGISTRY) so two gateways in one test process
never share counters; the standard ``process_*``, ``python_gc_*`` and ``python_info``
series are registered on it explicitly, as the global registry would have them.

Counters are counted where the event happens (heartbeats, HTTP requests, engine ticks);
fleet and rollout gauges are read from the database at scrape time, so they are never stale
and cost nothing between scrapes. Scrapes run on the event loop thread, the only thread
that touches the database.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Protocol

from aiohttp import web
from prometheus_client import (
    CollectorRegistry,
    Counter,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from shell.http import Handler

if TYPE_CHECKING:
    from cloud_gateway.bus import Bus
    from cloud_gateway.db import Database
    from cloud_gateway.leader import Leadership


class Source(Protocol):
    """What the scrape-time gauges read of the gateway."""

    db: Database
    bus: Bus | None
    leadership: Leadership


#: States a rollout row can be in (rollouts.py); each is exported even at 0 so a
#: dashboard or alert on a state never sees "no data".
ROLLOUT_STATES = ("running", "succeeded", "rolled_back")
#: The route an agent reports its heartbeat on over HTTP (the other path is MQTT).
STATUS_ROUTE = "/api/v1/fleet/{agent_id}/status"

_TICK_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_HTTP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)


class _FleetCollector(Collector):
    """Gauges read from the gateway's database at scrape time."""

    def __init__(self, gw: Source) -> None:
        self._gw = gw

    def collect(self) -> Iterator[GaugeMetricFamily]:
        gw = self._gw
        agents = GaugeMetricFamily(
            "gateway_agents", "Agents known to the gateway, by online state", labels=["online"]
        )
        counts = {True: 0, False: 0}
        for row in gw.db.query("select online, count(*) as n from agents group by online"):
            counts[bool(row["online"])] += row["n"]
        agents.add_metric(["true"], counts[True])
        agents.add_metric(["false"], counts[False])
        yield agents
        yield GaugeMetricFamily(
            "gateway_agents_online", "Agents whose heartbeat is current", value=counts[True]
        )
        rollouts = GaugeMetricFamily(
            "gateway_rollouts", "Rollouts in the history, by state", labels=["state"]
        )
        by_state = dict.fromkeys(ROLLOUT_STATES, 0)
        for row in gw.db.query("select state, count(*) as n from rollouts group by state"):
            by_state[row["state"]] = row["n"]
        for state, n in sorted(by_state.items()):
            rollouts.add_metric([state], n)
        yield rollouts
        yield GaugeMetricFamily(
            "gateway_broker_connected",
            "1 while the gateway's MQTT connection is up",
            value=int(bool(gw.bus and gw.bus.connected)),
        )
        yield GaugeMetricFamily(
            "gateway_leader",
            "1 while this replica runs the rollout engine (always 1 on SQLite)",
            value=int(gw.leadership.leading),
        )


class GatewayMetrics:
    """The registry and the instruments the gateway updates."""

    def __init__(self, gw: Source) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        self.registry.register(_FleetCollector(gw))
        self.heartbeats = Counter(
            "gateway_heartbeats",
            "Agent heartbeats, by transport (mqtt, http) and outcome (ingested, rejected)",
            ["transport", "outcome"],
            registry=self.registry,
        )
        for transport in ("mqtt", "http"):
            for outcome in ("ingested", "rejected"):
                self.heartbeats.labels(transport, outcome)
        self.engine_tick = Histogram(
            "gateway_engine_tick_duration_seconds",
            "Duration of one rollout engine tick (offline sweep + rollout steps)",
            buckets=_TICK_BUCKETS,
            registry=self.registry,
        )
        self.http_requests = Counter(
            "gateway_http_requests",
            "HTTP requests, by route template, method and status code",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.http_duration = Histogram(
            "gateway_http_request_duration_seconds",
            "HTTP request duration, by route template",
            ["route"],
            buckets=_HTTP_BUCKETS,
            registry=self.registry,
        )
        self.middleware = self._make_middleware()

    def mqtt_heartbeat(self, accepted: bool, count: int = 1) -> None:
        if count:
            self.heartbeats.labels("mqtt", "ingested" if accepted else "rejected").inc(count)

    def _make_middleware(self) -> Any:
        @web.middleware
        async def metrics_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
            # The route template, never the raw path: agent ids and versions in paths
            # would make one series per agent (unbounded label cardinality).
            resource = request.match_info.route.resource
            route = resource.canonical if resource is not None else "unmatched"
            t0 = time.perf_counter()
            status = 500
            try:
                response = await handler(request)
                status = response.status
                return response
            except web.HTTPException as exc:
                status = exc.status
                raise
            finally:
                self.http_requests.labels(route, request.method, str(status)).inc()
                self.http_duration.labels(route).observe(time.perf_counter() - t0)
                if route == STATUS_ROUTE and request.method == "POST":
                    outcome = "ingested" if status < 300 else "rejected"
                    self.heartbeats.labels("http", outcome).inc()

        return metrics_middleware
