"""The agent's status documents: ``/api/status`` JSON and the MQTT heartbeat.

Both have a ``models`` section with one entry per served model (its version, topic
binding, latency and counters: what the rollout gates judge for that model) and
agent-wide fields: counters summed over the models, latency quantiles of the first model
(for the single-model dashboards and tools that read them) and the worst p50/p99 in the
heartbeat's ``metrics``.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any, Protocol

from bus.heartbeat import Health, Heartbeat, Metrics, ServedModel
from edge_agent.app.pipeline import Pipeline
from edge_agent.app.settings import EdgeSettings
from edge_agent.durability.store import Store
from edge_agent.ops.telemetry import Telemetry
from edge_agent.transport.link import MqttLink


class EdgeAgent(Protocol):
    """What the status documents read of an agent (``edge_agent.app.agent.EdgeAgent``)."""

    settings: EdgeSettings
    pipelines: dict[str, Pipeline]
    telemetry: Telemetry
    deadletters: Counter[str]
    started: float
    update_state: dict[str, Any]
    link: MqttLink | None
    remote: Any
    store: Store | None

    @property
    def ready(self) -> bool: ...

    @property
    def broker_connected(self) -> bool: ...


def _cloud_state(agent: EdgeAgent) -> str:
    if agent.remote is None:
        return "none"
    try:
        return str(agent.remote.stats.breaker_state)
    except Exception:  # a client without stats yet
        return "closed"


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000.0, 3)


def cloud_doc(agent: EdgeAgent) -> dict[str, Any]:
    """The cloud tier as the routing policy sees it: RTT prior vs measurement, breaker."""
    s = agent.settings
    doc: dict[str, Any] = {
        "configured": agent.remote is not None,
        "target": s.cloud,
        "model": s.cloud_model,
        "rtt_prior_ms": s.cloud_rtt_prior_ms,
    }
    first = next(iter(agent.pipelines.values()), None)
    dispatcher = first.dispatcher if first is not None else None  # built in start()
    if agent.remote is None:
        return doc | {"breaker": "none"}
    if dispatcher is None:
        return doc | {"breaker": _cloud_state(agent), "available": bool(agent.remote.available)}
    st = agent.remote.stats
    rtt = dispatcher.rtt
    used_rtt, used_p95 = rtt.estimate(st)
    measured = rtt.samples > 0 and st.rtt_ewma_s > 0.0
    return doc | {
        "measured": rtt.measured,  # enough samples that the prior no longer counts
        "samples": rtt.samples,
        "rtt_ms": _ms(used_rtt),  # what the policy uses now (prior, blend or measurement)
        "p95_ms": _ms(used_p95),
        "rtt_measured_ms": _ms(st.rtt_ewma_s if measured else None),
        "p95_measured_ms": _ms(st.rtt_p95_s if measured else None),
        "server_ms": _ms(st.server_ewma_s if measured else None),
        "breaker": str(st.breaker_state),
        "available": bool(agent.remote.available),
        "calls": st.calls,
        "failures": st.failures,
        "in_flight": sum(
            p.dispatcher.remote_busy for p in agent.pipelines.values() if p.dispatcher is not None
        ),
    }


def mqtt_doc(agent: EdgeAgent) -> dict[str, Any]:
    """Transport counters: what took the fast paths and what could not be sent."""
    link = agent.link
    if link is None:
        return {"messages": 0, "fast_path": 0, "dropped_offline": 0, "raw_overflows": 0}
    return {
        "messages": link.messages,  # every message read, readings and control
        "fast_path": link.client.fast_count,  # QoS-0 PUBLISHes split without paho
        "dropped_offline": link.dropped_offline,  # QoS-0 results while disconnected
        "raw_overflows": link.client.raw_dropped,  # result batches over the send queue cap
    }


_TOTALS = (
    "readings",
    "inferences",
    "results",
    "offloaded",
    "fallbacks",
    "escalated",
    "low_confidence_kept",
    "requests",
    "errors",
)


def _model_doc(p: Pipeline, now: float) -> dict[str, Any]:
    """One served model in ``/api/status``."""
    st = p.stats
    loaded = p.models.loaded
    return {
        "name": p.name,
        "version": loaded.manifest.version if loaded is not None else None,
        "backend": loaded.backend.description if loaded is not None else None,
        "topics": p.core_topics,
        "slo_ms": round(p.core.slo_s * 1000.0, 3),
        "ready": p.ready,
        "rates": {
            "readings_per_s": round(st.readings_rate.rate(st.readings, now), 1),
            "inferences_per_s": round(st.inference_rate.rate(st.results, now), 1),
        },
        "latency_ms": st.quantiles_ms(),
        "slo_attainment": round(st.slo_attainment, 5),
        "offload_share": round(st.offload_share, 5),
        "queue_depth": p.dispatcher.depth if p.dispatcher is not None else 0,
        "routes": dict(st.routes),
        "totals": {k: getattr(st, k) for k in _TOTALS},
        "history": list(p.models.history),
    }


def _sum(pipes: list[Pipeline], attr: str) -> int:
    return sum(getattr(p.stats, attr) for p in pipes)


def status_doc(agent: EdgeAgent) -> dict[str, Any]:
    s = agent.settings
    pipes = list(agent.pipelines.values())
    first = pipes[0] if pipes else None
    now = time.monotonic()
    models = [_model_doc(p, now) for p in pipes]
    tel = agent.telemetry
    deadletter = dict(agent.deadletters)
    for p in pipes:
        for reason, n in p.stats.deadletter_by_reason.items():
            deadletter[reason] = deadletter.get(reason, 0) + n
    routes: dict[str, int] = {}
    reasons: dict[str, int] = {}
    for p in pipes:
        for k, v in p.stats.routes.items():
            routes[k] = routes.get(k, 0) + v
        for k, v in p.stats.reasons.items():
            reasons[k] = reasons.get(k, 0) + v
    results = _sum(pipes, "results")
    totals = {k: _sum(pipes, k) for k in _TOTALS}
    totals["deadletter"] = sum(deadletter.values())
    return {
        "agent_id": s.agent_id,
        "site": s.site,
        "uptime_s": round(now - agent.started, 3),
        "ready": agent.ready,
        "broker_connected": agent.broker_connected,
        "policy": s.policy,
        "slo_ms": models[0]["slo_ms"] if models else (s.slo_ms or None),
        "model": (
            {k: models[0][k] for k in ("name", "version", "backend")}
            if models
            else {"name": None, "version": None, "backend": None}
        ),
        "models": models,
        "model_history": models[0]["history"] if models else [],
        "rates": {
            "readings_per_s": round(sum(m["rates"]["readings_per_s"] for m in models), 1),
            "inferences_per_s": round(sum(m["rates"]["inferences_per_s"] for m in models), 1),
        },
        "latency_ms": models[0]["latency_ms"] if models else {"p50": 0.0, "p95": 0.0, "p99": 0.0},
        "slo_attainment": round(_sum(pipes, "deadline_met") / results, 5) if results else 1.0,
        "offload_share": round(totals["offloaded"] / results, 5) if results else 0.0,
        "routes": routes,
        "reasons": reasons,
        "queue_depth": sum(m["queue_depth"] for m in models),
        "node": {
            "cpu_percent": tel.cpu_percent,
            "mem_percent": tel.mem_percent,
            "rss_mb": round(tel.rss_mb, 1),
            "gpu_percent": tel.gpu_percent,
            "temperature_c": tel.temperature_c,
        },
        "deadletter": {"total": totals["deadletter"], "by_reason": deadletter},
        "alerts": sorted((a for p in pipes for a in p.core.alerts), key=lambda a: a.get("ts", 0.0))[
            -20:
        ],
        "streams": {
            "duplicates": _sum(pipes, "duplicates"),
            "late": _sum(pipes, "late"),
            "held": _sum(pipes, "held"),
            "reordered": _sum(pipes, "reordered"),
            "gaps": _sum(pipes, "gaps"),
            "missing": _sum(pipes, "missing"),
            "evicted": _sum(pipes, "evicted"),
            "clock_skew": sum(p.core.clock.skewed for p in pipes),
        },
        "deadline_from": s.deadline_from,
        "mqtt": mqtt_doc(agent),
        "journal": (
            dict(first.journal.stats) if first is not None and first.journal is not None else None
        ),
        "store": agent.store.status() if agent.store is not None else None,
        "cloud": cloud_doc(agent),
        "totals": totals,
        "update": dict(agent.update_state),
    }


def _metrics(p: Pipeline) -> Metrics:
    """The rollout gates' inputs for one model."""
    st = p.stats
    q = st.quantiles_ms()
    return Metrics(
        inferences=st.inferences,
        errors=st.errors,
        nan_outputs=st.nan_outputs,
        p50_ms=q["p50"],
        p99_ms=q["p99"],
        error_rate=round(st.error_rate, 6),
        slo_attainment=round(st.slo_attainment, 6),
        offload_share=round(st.offload_share, 6),
        results=st.results,
        deadline_met=st.deadline_met,
    )


def heartbeat_doc(
    agent: EdgeAgent, config: dict[str, Any] | None = None, **extra: Any
) -> Heartbeat:
    """The ``fleet/{agent}/status`` document (contract: :mod:`bus.heartbeat`)."""
    s = agent.settings
    pipes = [p for p in agent.pipelines.values() if p.models.loaded is not None]
    per_model = {p.name: _metrics(p) for p in pipes}
    models = {
        p.name: ServedModel(
            version=p.version, state="serving", topics=p.core_topics, metrics=per_model[p.name]
        )
        for p in pipes
    }
    results = _sum(pipes, "results")
    errors = _sum(pipes, "errors")
    offloaded = _sum(pipes, "offloaded")
    metrics = Metrics(
        inferences=_sum(pipes, "inferences"),
        errors=errors,
        nan_outputs=_sum(pipes, "nan_outputs"),
        p50_ms=max((m.p50_ms for m in per_model.values()), default=0.0),
        p99_ms=max((m.p99_ms for m in per_model.values()), default=0.0),
        error_rate=round(errors / results, 6) if results else 0.0,
        slo_attainment=round(_sum(pipes, "deadline_met") / results, 6) if results else 1.0,
        # Counters, so the gateway's SLO gate can judge the window since an update.
        results=results,
        deadline_met=_sum(pipes, "deadline_met"),
        offload_share=round(offloaded / results, 6) if results else 0.0,
    )
    return Heartbeat(
        agent_id=s.agent_id,
        site=s.site,
        online=True,
        ts=time.time(),
        models=models,
        update=dict(agent.update_state),
        health=Health(ready=agent.ready, broker=agent.broker_connected, cloud=_cloud_state(agent)),
        metrics=metrics,
        cloud=cloud_doc(agent),
        config=config,
        **extra,
    )
