"""Figures of a run from the collector's raw columns: latency, loss, SLO, offload, versions.

Loss is counted, not estimated: a stream that published ``n`` readings (seq 0..n-1)
owes one result per window ending at seq ``W-1 + k*H <= n-1``; the result's ``seq`` is
the seq of the last reading of its window, so missing windows are the gaps between
answered seqs (see :func:`stream_loss`) and duplicates are repeated seqs.
"""

from __future__ import annotations

import itertools
from collections import Counter, defaultdict
from collections.abc import Mapping
from typing import Any

import numpy as np

from simulators.collector import ResultColumns


def _labels(r: ResultColumns) -> list[str]:
    """``model vN`` per result."""
    return [f"{m} v{v}" for m, v in zip(r.model, r.version, strict=True)]


def expected_seqs(published: int, window: int, hop: int) -> range:
    """Window-end seqs an agent must answer for a stream that sent ``published`` readings."""
    return range(window - 1, published, hop)


def _percentiles(values: np.ndarray) -> dict[str, float | None]:
    if values.size == 0:
        return {"p50": None, "p95": None, "p99": None, "max": None}
    p50, p95, p99 = np.percentile(values, [50, 95, 99])
    return {"p50": float(p50), "p95": float(p95), "p99": float(p99), "max": float(values.max())}


def stream_loss(seqs: list[int], published: int, window: int, hop: int) -> int:
    """Windows missing from one stream's answered window-end seqs, counted by gaps.

    A gap of ``d`` between consecutive answered seqs hides ``ceil(d / hop) - 1`` windows;
    the head counts from the first possible window (seq ``W-1``), the tail up to the last
    published reading. Gap counting (rather than a fixed grid) stays right when an agent
    legitimately restarts its window grid, while still counting what the restart skipped.
    """
    if published < window:
        return 0
    last = published - 1
    if not seqs:
        return len(expected_seqs(published, window, hop))
    ordered = sorted(set(seqs))
    missing = max(0, (ordered[0] - (window - 1)) // hop)
    for a, b in itertools.pairwise(ordered):
        missing += max(0, -(-(b - a) // hop) - 1)
    return missing + max(0, (last - ordered[-1]) // hop)


def loss(r: ResultColumns, published: Mapping[str, int], window: int, hop: int) -> dict[str, Any]:
    """Expected vs received windows per stream; missing by seq gaps; duplicates; off-grid."""
    got: dict[str, list[int]] = defaultdict(list)
    for stream, seq in zip(r.stream, r.seq, strict=True):
        got[stream].append(seq)
    expected = received = missing = duplicates = off_grid = 0
    lossy: dict[str, int] = {}
    for stream, n in published.items():
        grid = expected_seqs(n, window, hop)
        seqs = got.pop(stream, [])
        have = set(seqs)
        duplicates += len(seqs) - len(have)
        off_grid += sum(1 for s in have if s not in grid)
        miss = stream_loss(seqs, n, window, hop)
        expected += len(grid)
        received += len(have)
        missing += miss
        if miss:
            lossy[stream] = miss
    unknown = sum(len(v) for v in got.values())  # results for streams nobody published
    worst = sorted(lossy.items(), key=lambda kv: -kv[1])[:10]
    return {
        "expected": expected,
        "received": received,
        "missing": missing,
        "duplicates": duplicates,
        "off_grid": off_grid,
        "unknown_streams": unknown,
        "lossy_streams": len(lossy),
        "worst_streams": dict(worst),
    }


def analyze(
    r: ResultColumns,
    published: Mapping[str, int],
    *,
    window: int,
    hop: int,
    slo_ms: float,
    start: float,
    bucket_s: float = 1.0,
    burst: tuple[float, float] | None = None,
) -> dict[str, Any]:
    """All figures of a run. ``start`` is the unix time the sensors started."""
    recv = np.asarray(r.recv, dtype=np.float64)
    ts = np.asarray(r.ts, dtype=np.float64)
    e2e = (recv - ts) * 1000.0
    cloud = np.asarray([x == "cloud" for x in r.route], dtype=bool)
    within = e2e <= slo_ms
    n = int(recv.size)
    out: dict[str, Any] = {
        "results": n,
        "slo_ms": slo_ms,
        "latency_ms": _percentiles(e2e),
        "agent_latency_ms": _percentiles(np.asarray(r.agent_ms, dtype=np.float64)),
        "slo_attainment": float(within.mean()) if n else None,
        "agent_deadline_met": float(np.mean(r.deadline_met)) if n else None,
        "offload_share": float(cloud.mean()) if n else None,
        "routes": dict(Counter(r.route)),
        # By model too: cloud answers name the cloud model, edge answers the rolled-out one.
        "versions": dict(Counter(_labels(r))),
        "loss": loss(r, published, window, hop),
        "readings_published": int(sum(published.values())),
        "start_unix": start,  # the plots' time origin (report: wall times, per-agent plot)
    }
    if n:
        span = max(float(recv.max() - start), 1e-9)
        out["throughput_per_s"] = n / span
    else:
        out["throughput_per_s"] = 0.0
    if burst is not None and n:
        t_rel = ts - start
        in_burst = (t_rel >= burst[0]) & (t_rel < burst[1])
        out["burst"] = {
            "window_s": list(burst),
            "results": int(in_burst.sum()),
            "offload_share": float(cloud[in_burst].mean()) if in_burst.any() else 0.0,
            "slo_attainment": float(within[in_burst].mean()) if in_burst.any() else None,
        }
    out["buckets"] = buckets(r, e2e, cloud, within, start, bucket_s)
    return out


def buckets(
    r: ResultColumns,
    e2e: np.ndarray,
    cloud: np.ndarray,
    within: np.ndarray,
    start: float,
    bucket_s: float,
) -> list[dict[str, Any]]:
    """Per time bucket (by sensor ts): count, percentiles, SLO, offload share, versions."""
    if e2e.size == 0:
        return []
    idx = np.floor((np.asarray(r.ts) - start) / bucket_s).astype(np.int64)
    idx = np.clip(idx, 0, None)
    versions = np.asarray(_labels(r))
    out = []
    for b in range(int(idx.max()) + 1):
        sel = idx == b
        count = int(sel.sum())
        row: dict[str, Any] = {"t": b * bucket_s, "results": count}
        if count:
            row.update(_percentiles(e2e[sel]))
            row["slo_attainment"] = float(within[sel].mean())
            row["offload_share"] = float(cloud[sel].mean())
            vs, cs = np.unique(versions[sel], return_counts=True)
            row["versions"] = {str(v): int(c) for v, c in zip(vs, cs, strict=True)}
        out.append(row)
    return out


def detection(
    r: ResultColumns, faults: list[Any], start: float, window_s: float
) -> dict[str, Any] | None:
    """Anomaly flags vs the scheduled faults (``payloads.FaultWindow``): recall, false alarms.

    A window counts as faulty when its last reading fell inside a fault window of its
    sensor and the window lies wholly inside it (``window_s`` of readings); windows that
    straddle the fault's start or end count for neither side.
    """
    flagged = [a for a in r.anomaly if a is not None]
    if not flagged:
        return None
    tp = fn = fp = tn = 0
    for stream, ts, flag in zip(r.stream, r.ts, r.anomaly, strict=True):
        if flag is None:
            continue
        index = int(stream.split("/")[1].removeprefix("dev") or 0)
        t = ts - start
        faulty = edge = False
        for fw in faults:
            if index % fw.every:
                continue
            if fw.start_s + window_s <= t < fw.start_s + fw.length_s:
                faulty = True
            elif fw.start_s <= t < fw.start_s + fw.length_s + window_s:
                edge = True
        if edge and not faulty:
            continue
        if faulty:
            tp, fn = tp + flag, fn + (not flag)
        else:
            fp, tn = fp + flag, tn + (not flag)
    return {
        "flagged": sum(flagged),
        "recall": tp / (tp + fn) if tp + fn else None,
        "false_alarm_rate": fp / (fp + tn) if fp + tn else None,
        "faulty_windows": tp + fn,
        "healthy_windows": fp + tn,
    }
