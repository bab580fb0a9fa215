"""Offered load against local capacity per agent, from the scenario alone (no measurement).

A scenario's ``[edge]`` table gives each virtual node a defined inference capacity; the
sensor count, rate and load shape give the windows per second each agent must answer.
Their ratio is what the run is about: below 1 the edge alone keeps up, above 1 the
excess must go to the cloud tier (or queue).
"""

from __future__ import annotations

from typing import Any

from simulators.scenario import Scenario


def peak_factor(sc: Scenario, step_s: float = 0.1) -> float:
    """The load shape's highest rate multiplier over the run."""
    steps = max(1, int(sc.duration_s / step_s))
    return max(sc.sensors.shape.factor(i * step_s) for i in range(steps + 1))


def capacity_figures(sc: Scenario, hop: int) -> dict[str, Any]:
    """Windows/s per agent offered (base, peak) and computable locally (batch 1, max batch)."""
    edge = sc.stack.edge
    base = sc.sensors.count / sc.stack.agents * sc.sensors.rate_hz / hop
    peak = base * peak_factor(sc)
    at_one = edge.capacity_per_s(1)
    at_max = edge.capacity_per_s(sc.stack.max_batch)
    return {
        "emulated": edge.emulated,
        "emulate_ms_per_batch": edge.emulate_ms_per_batch,
        "emulate_ms_per_item": edge.emulate_ms_per_item,
        "workers": edge.workers,
        "max_batch": sc.stack.max_batch,
        "capacity_per_s_batch1": at_one,
        "capacity_per_s_max_batch": at_max,
        "offered_per_s_base": base,
        "offered_per_s_peak": peak,
        "peak_over_capacity": (peak / at_max) if at_max else None,
    }


def describe(c: dict[str, Any]) -> str:
    """One line for summaries: capacity, offered load and their ratio, per agent."""
    load = f"offered {c['offered_per_s_base']:.0f} windows/s, peak {c['offered_per_s_peak']:.0f}"
    if not c["emulated"]:
        return f"not emulated (this machine's CPU); {load}"
    one, top = c["capacity_per_s_batch1"], c["capacity_per_s_max_batch"]
    lo, hi = f"{one:.0f}", f"{top:.0f}"
    cap = f"{hi} windows/s" if lo == hi else f"{lo}-{hi} windows/s"
    return (
        f"{cap} ({c['workers']} worker(s) x ({c['emulate_ms_per_batch']:g} ms/batch + "
        f"{c['emulate_ms_per_item']:g} ms/window), batch 1-{c['max_batch']}); {load} "
        f"= {c['peak_over_capacity']:.1f}x capacity at peak"
    )
