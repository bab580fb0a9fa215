"""The agent's status documents: ``/api/status`` JSON and the MQTT heartbeat (contracts.md)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from edge_agent.agent import EdgeAgent


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
    dispatcher = getattr(agent, "dispatcher", None)  # built in start()
    if agent.remote is None or dispatcher is None:
        return doc | {"breaker": "none"}
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
        "in_flight": dispatcher.remote_busy,
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


def status_doc(agent: EdgeAgent) -> dict[str, Any]:
    s, st = agent.settings, agent.stats
    loaded = agent.models.loaded
    model = (
        {
            "name": loaded.manifest.name,
            "version": loaded.manifest.version,
            "backend": loaded.backend.description,
        }
        if loaded is not None
        else {"name": s.model_ref()[0], "version": None, "backend": None}
    )
    now = time.monotonic()
    tel = agent.telemetry
    return {
        "agent_id": s.agent_id,
        "site": s.site,
        "uptime_s": round(now - agent.started, 3),
        "ready": agent.ready,
        "broker_connected": agent.broker_connected,
        "policy": s.policy,
        "slo_ms": round(agent.core.slo_s * 1000.0, 3),
        "model": model,
        "model_history": list(agent.models.history),
        "rates": {
            "readings_per_s": round(st.readings_rate.rate(st.readings, now), 1),
            "inferences_per_s": round(st.inference_rate.rate(st.results, now), 1),
        },
        "latency_ms": st.quantiles_ms(),
        "slo_attainment": round(st.slo_attainment, 5),
        "offload_share": round(st.offload_share, 5),
        "routes": dict(st.routes),
        "reasons": dict(st.reasons),
        "queue_depth": agent.dispatcher.depth if hasattr(agent, "dispatcher") else 0,
        "node": {
            "cpu_percent": tel.cpu_percent,
            "mem_percent": tel.mem_percent,
            "rss_mb": round(tel.rss_mb, 1),
            "gpu_percent": tel.gpu_percent,
            "temperature_c": tel.temperature_c,
        },
        "deadletter": {"total": st.deadletter_total, "by_reason": dict(st.deadletter_by_reason)},
        "alerts": list(agent.core.alerts)[-20:],
        "streams": {
            "duplicates": st.duplicates,
            "late": st.late,
            "gaps": st.gaps,
            "missing": st.missing,
            "clock_skew": agent.core.clock.skewed,
        },
        "deadline_from": s.deadline_from,
        "mqtt": mqtt_doc(agent),
        "journal": dict(agent.journal.stats) if agent.journal is not None else None,
        "cloud": cloud_doc(agent),
        "totals": {
            "readings": st.readings,
            "inferences": st.inferences,
            "results": st.results,
            "deadletter": st.deadletter_total,
            "offloaded": st.offloaded,
            "fallbacks": st.fallbacks,
            "escalated": st.escalated,  # cascade: low-confidence rows the cloud answered
            "low_confidence_kept": st.low_confidence_kept,
            "requests": st.requests,
            "errors": st.errors,
        },
        "update": dict(agent.update_state),
    }


def heartbeat_doc(agent: EdgeAgent) -> dict[str, Any]:
    s, st = agent.settings, agent.stats
    loaded = agent.models.loaded
    models = (
        {loaded.manifest.name: {"version": loaded.manifest.version, "state": "serving"}}
        if loaded is not None
        else {}
    )
    q = st.quantiles_ms()
    return {
        "agent_id": s.agent_id,
        "site": s.site,
        "online": True,
        "ts": time.time(),
        "models": models,
        "update": dict(agent.update_state),
        "health": {
            "ready": agent.ready,
            "broker": agent.broker_connected,
            "cloud": _cloud_state(agent),
        },
        "metrics": {
            "inferences": st.inferences,
            "errors": st.errors,
            "nan_outputs": st.nan_outputs,
            "p50_ms": q["p50"],
            "p99_ms": q["p99"],
            "error_rate": round(st.error_rate, 6),
            "slo_attainment": round(st.slo_attainment, 6),
            "offload_share": round(st.offload_share, 6),
        },
        "cloud": cloud_doc(agent),
    }
