"""Turning model outputs into result messages and alerts (one JSON object per request).

The result JSON is the contract :class:`bus.results.Result` (fields, meaning of the
latency parts; ``tests/bus/test_contracts.py`` holds these strings to it). The latency
clock's origin is the sensor ``ts`` by default, see :mod:`edge_agent.ingest.deadlines`.
Strings are assembled with cached per-stream prefixes because ``json.dumps`` of a fresh
dict per result is a measurable share of the agent's CPU at tens of thousands/s.
"""

from __future__ import annotations

import json
import time
from typing import Any

import numpy as np

from bus.alerts import SEVERITY, Alert, Kind, State
from edge_agent.output.alerts import EPISODES, AnomalyEpisodes, alert_key
from models.manifest import Manifest


def stream_prefix(site: str, device: str, stream: str, agent: str) -> str:
    """The constant head of every result of one stream (ids are validated topic segments)."""
    return f'{{"site":"{site}","device":"{device}","stream":"{stream}","agent":"{agent}",'


class Outputs:
    """Per-row decoded outputs of one batch: labels/scores or anomaly scores."""

    __slots__ = ("anomaly", "json", "labels", "nan", "scores")

    def __init__(
        self,
        manifest: Manifest,
        outputs: dict[str, np.ndarray],
        n: int,
        threshold: float | None = None,
    ) -> None:
        post = manifest.postprocessing
        arr = np.asarray(outputs[post.output], dtype=np.float64).reshape(n, -1)
        finite = np.asarray(np.isfinite(arr).all(axis=1))
        self.nan = int(n - finite.sum())
        self.labels: list[str | None] = [None] * n
        self.scores: list[float | None] = [None] * n
        self.anomaly: list[bool] = [False] * n
        rows = arr.tolist()
        out: list[str] = []
        if post.kind == "classifier":
            idx = arr.argmax(axis=1).tolist()
            labels = post.labels
            for i in range(n):
                if not finite[i]:
                    out.append('{"label":null,"scores":null,"error":"non-finite-output"}')
                    continue
                label = labels[idx[i]] if idx[i] < len(labels) else str(idx[i])
                self.labels[i] = label
                scores = ",".join(f"{v:.6g}" for v in rows[i])
                out.append(f'{{"label":{json.dumps(label)},"scores":[{scores}]}}')
        else:
            thr = threshold if threshold is not None else float(post.threshold or 0.0)
            for i in range(n):
                if not finite[i]:
                    out.append('{"score":null,"anomaly":null,"error":"non-finite-output"}')
                    continue
                s = rows[i][0]
                self.scores[i] = s
                self.anomaly[i] = s > thr
                out.append(f'{{"score":{s:.6g},"anomaly":{"true" if s > thr else "false"}}}')
        self.json = out


def error_output(reason: str) -> str:
    return f'{{"label":null,"scores":null,"error":{json.dumps(reason)}}}'


def result_json(
    prefix: str,
    seq: int,
    ts: float,
    model_part: str,
    output: str,
    route: str,
    reason: str,
    total_ms: float,
    queue_ms: float,
    compute_ms: float,
    network_ms: float,
    transit_ms: float,
    met: bool,
) -> str:
    return (
        f'{prefix}"seq":{seq},"ts":{ts!r},{model_part}"output":{output},'
        f'"route":"{route}","reason":"{reason}","latency_ms":{{"total":{total_ms:.3f},'
        f'"queue":{queue_ms:.3f},"compute":{compute_ms:.3f},"network":{network_ms:.3f},'
        f'"transit":{transit_ms:.3f}}},'
        f'"deadline_met":{"true" if met else "false"}}}'
    )


def model_part(manifest: Manifest, answered_by: tuple[str, int | None] | None = None) -> str:
    """The model that answered: the local one, or the cloud's ``(model, version)``."""
    name, version = (manifest.name, manifest.version) if answered_by is None else answered_by
    return f'"model":{json.dumps(name)},"version":{"null" if version is None else version},'


def alert_for(
    st: Any,
    seq: int,
    outs: Outputs,
    i: int,
    agent_id: str,
    episodes: AnomalyEpisodes = EPISODES,
) -> dict[str, Any] | None:
    """The alert row ``i`` raises, if any (rules and fields: :mod:`edge_agent.output.alerts`).

    A class change is a one-shot ``info`` event; an anomaly fires when the score crosses
    the threshold and resolves after :data:`~edge_agent.output.alerts.RESOLVE_AFTER` windows back
    below it. ``st`` is the stream's window state; its ``last_label`` is updated here.
    """
    label = outs.labels[i]
    now = time.time()
    kind: Kind | None = None
    detail: str | None = None
    value: float | None = None
    new_label: str | None = None
    state: State = "firing"
    starts_at = now
    if label is not None:
        if st.last_label is not None and label != st.last_label:
            kind, detail, new_label = "class-change", f"{st.last_label} -> {label}", label
        st.last_label = label
    elif outs.scores[i] is not None:
        score = outs.scores[i]
        change = episodes.observe(st, outs.anomaly[i], now)
        if change is not None:
            state, starts_at = change
            kind, value = "anomaly", score
            quiet = f", at or below the threshold for {episodes.resolve_after} windows"
            detail = f"score {score:.4g}" + ("" if state == "firing" else quiet)
    if kind is None:
        return None
    sid = st.sid
    return Alert(
        ts=now,
        site=sid.site,
        device=sid.device,
        stream=sid.stream,
        kind=kind,
        detail=detail,
        seq=seq,
        agent=agent_id,
        key=alert_key(kind, sid.site, sid.device, sid.stream),
        severity=SEVERITY[kind],
        state=state,
        starts_at=starts_at,
        value=value,
        label=new_label,
    ).model_dump()


def batch_results(
    done: Any,
    jsons: list[str],
    mpart: str,
    now: float,
    queue_ms: list[float],
    compute_ms: float,
    network_ms: float,
) -> tuple[list[str], np.ndarray, int]:
    """Result JSON per request of a finished batch, latencies (s) and deadlines met."""
    reqs = done.requests
    lat = np.empty(len(reqs))
    bodies: list[str] = []
    met = 0
    for i, r in enumerate(reqs):
        trace = r.trace
        total = now - r.origin
        lat[i] = total
        ok = now <= r.deadline
        met += ok
        body = result_json(
            r.stream.prefix,
            r.seq,
            r.ts,
            mpart,
            jsons[i],
            done.route,
            done.reason,
            total * 1000.0,
            queue_ms[i],
            compute_ms,
            network_ms,
            (r.arrival - r.origin) * 1000.0,
            ok,
        )
        if trace is not None:  # traced: the id to look the trace up by
            body = f'{body[:-1]},"trace_id":"{trace.trace_id}"}}'
        bodies.append(body)
    return bodies, lat, met
