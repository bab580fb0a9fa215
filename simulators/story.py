"""What happened when: the spans a report shades (bursts, rollout waves, outages, faults).

Everything is on one axis, seconds since the run started (the plots' x axis): the load
shape's bursts come from the scenario, faults from the scenario and the run's events
(their ``-end``/``restarted`` events close them), rollouts and their waves from the
gateway's rollout record (its own event log, wall-clock ``ts``), mapped onto the run's
axis through the moment the simulator saw the rollout start.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from simulators.scenario import Scenario
from simulators.shapes import Burst

#: Fault kinds that last: the event that ends each.
_ENDS = {
    "wan-outage": "wan-outage-end",
    "wan-blackhole": "wan-blackhole-end",
    "cpu-hog": "cpu-hog-end",
    "agent-kill": "agent-restarted",
}
OUTAGES = {"wan-outage", "wan-blackhole", "agent-kill", "offload-kill"}
INSTANT_S = 0.5  # width drawn for a fault that is a moment (a dropped connection)

# Shading colours per category (burst, rollout, wave, outage, fault).
COLORS = {
    "burst": "#f28e2b",
    "rollout": "#4e79a7",
    "wave": "#76b7b2",
    "outage": "#e15759",
    "fault": "#b07aa1",
}


@dataclass(frozen=True)
class Span:
    """One shaded interval: ``category`` picks the colour, ``label`` names it."""

    category: str  # burst | rollout | wave | outage | fault
    start: float
    end: float
    label: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def burst_spans(sc: Scenario) -> list[Span]:
    shape = sc.sensors.shape
    if not isinstance(shape, Burst):
        return []
    out = []
    for at in shape.at:
        starts = [at]
        if shape.every_s > 0:
            k = 1
            while at + k * shape.every_s < sc.duration_s:
                starts.append(at + k * shape.every_s)
                k += 1
        for s in starts:
            if s < sc.duration_s:
                end = min(s + shape.length_s, sc.duration_s)
                out.append(Span("burst", s, end, f"burst x{shape.multiplier:g}"))
    return out


def fault_spans(sc: Scenario, events: list[dict[str, Any]]) -> list[Span]:
    """Faults as run (from events) or, for a fault with no event, as scheduled."""
    out = []
    seen: set[int] = set()
    for f in sc.faults:
        started = next(
            (i for i, e in enumerate(events) if e.get("kind") == f.kind and i not in seen), None
        )
        start = f.at_s
        end: float | None = None
        if started is not None:
            seen.add(started)
            start = float(events[started]["t"])
            closing = _ENDS.get(f.kind)
            end = next(
                (float(e["t"]) for e in events[started + 1 :] if e.get("kind") == closing), None
            )
        if end is None:
            if f.kind in ("wan-outage", "wan-blackhole", "cpu-hog"):
                end = start + f.length_s
            elif f.kind == "agent-kill":
                end = start + (
                    f.restart_after_s if f.restart_after_s is not None else sc.duration_s
                )
            elif f.kind == "offload-kill":
                end = sc.duration_s  # never restarted within the run
            else:
                end = start + INSTANT_S
        label = f.kind + (f" agent {f.agent}" if f.kind == "agent-kill" else "")
        category = "outage" if f.kind in OUTAGES else "fault"
        out.append(Span(category, start, max(end, start + INSTANT_S), label))
    return out


def rollout_spans(
    sc: Scenario, events: list[dict[str, Any]], rollouts: list[dict[str, Any]]
) -> list[Span]:
    """Each rollout from start to finish, and each wave from issue to pass (or rollback)."""
    out = []
    by_id = {r.get("id"): r for r in rollouts if isinstance(r, dict)}
    started = [e for e in events if e.get("kind") == "rollout-started"]
    for i, ro in enumerate(sc.rollouts):
        ev = started[i] if i < len(started) else None
        info = by_id.get(ev.get("id")) if ev else None
        t_start = float(ev["t"]) if ev else ro.at_s
        name = f"{ro.model} v{ro.version}"
        # The gateway's clock (wall time) onto the run's axis: created_at is t_start.
        created = (info or {}).get("created_at")
        offset = (created - t_start) if isinstance(created, int | float) else None
        end_ev = None
        if ev is not None:
            end_ev = next(
                (
                    e
                    for e in events
                    if e.get("id") == ev.get("id") and e.get("kind") != "rollout-started"
                ),
                None,
            )
        finished = (info or {}).get("finished_at")
        if end_ev is not None:
            t_end = float(end_ev["t"])
        elif offset is not None and isinstance(finished, int | float):
            t_end = finished - offset
        else:
            t_end = sc.duration_s
        state = (info or {}).get("state") or "running"
        out.append(Span("rollout", t_start, max(t_end, t_start + INSTANT_S), f"{name} ({state})"))
        if offset is None:
            continue
        issued: dict[int, float] = {}
        for e in (info or {}).get("events") or []:
            detail = e.get("detail") or {}
            kind, ts = e.get("kind"), e.get("ts")
            if not isinstance(ts, int | float):
                continue
            wave = detail.get("wave")
            if kind == "wave-issued" and isinstance(wave, int):
                issued[wave] = ts - offset
            elif kind in ("wave-passed", "rolled-back", "succeeded") and issued:
                w = wave if isinstance(wave, int) and wave in issued else max(issued)
                begin = issued.pop(w)
                out.append(Span("wave", begin, max(ts - offset, begin + INSTANT_S), f"wave {w}"))
    return out


def spans(sc: Scenario, figures: dict[str, Any]) -> list[Span]:
    """Every span of a run, in time order."""
    events = list(figures.get("events") or [])
    rollouts = list(figures.get("rollouts") or [])
    found = burst_spans(sc) + fault_spans(sc, events) + rollout_spans(sc, events, rollouts)
    return sorted(found, key=lambda s: (s.start, s.category))
