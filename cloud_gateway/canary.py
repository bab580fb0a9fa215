"""Rollout logic as pure functions of (plan, observations, now): wave plans and the step
machine that issues waves, bakes them and fails them on a gate (:mod:`cloud_gateway.gates`).

The engine (:mod:`cloud_gateway.rollouts`) feeds it rows from SQLite and a wall clock and
applies the returned actions; tests feed it hand-made observations and a fake clock.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from cloud_gateway.gates import (
    Baseline,
    Control,
    GateState,
    Observation,
    Verdict,
    converged,
    evaluate,
    find_control,
    window,
)
from cloud_gateway.schemas import Gates
from models.errors import InvalidInput

_WAVE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(%?)\s*$")


def wave_size(spec: str, total: int) -> int:
    """'25%' or '3' -> cumulative number of targets reached after the wave."""
    m = _WAVE.fullmatch(spec)
    if not m:
        raise InvalidInput(f"bad wave {spec!r}: use a percentage like '10%' or a count like '2'")
    value = float(m.group(1))
    if m.group(2):
        if not 0 < value <= 100:
            raise InvalidInput(f"wave percentage must be in (0, 100]: {spec!r}")
        return max(1, math.ceil(total * value / 100))
    if value < 1 or value != int(value):
        raise InvalidInput(f"wave count must be a positive integer: {spec!r}")
    return min(total, int(value))


def plan_waves(agent_ids: list[str], waves: list[str], strategy: str) -> list[list[str]]:
    """Split targets into waves; sizes are cumulative and the last wave takes the rest."""
    if not agent_ids:
        raise InvalidInput("the selector matches no online agent")
    if strategy == "all-at-once":
        return [list(agent_ids)]
    if not waves:
        raise InvalidInput("a canary rollout needs at least one wave")
    total = len(agent_ids)
    plan: list[list[str]] = []
    reached = 0
    for spec in waves:
        upto = wave_size(spec, total)
        if upto > reached:
            plan.append(agent_ids[reached:upto])
            reached = upto
    if reached < total:
        plan.append(agent_ids[reached:])
    return plan


@dataclass(frozen=True, slots=True)
class Issue:
    wave: int
    agents: list[str]


@dataclass(frozen=True, slots=True)
class MarkConverged:
    wave: int


@dataclass(frozen=True, slots=True)
class Fail:
    reason: str
    rollback: list[str]


@dataclass(frozen=True, slots=True)
class Succeed:
    pass


Action = Issue | MarkConverged | Fail | Succeed


@dataclass(frozen=True, slots=True)
class Plan:
    """A rollout as the logic sees it (built from its SQLite rows)."""

    rollout_id: str
    version: int
    waves: list[list[str]]
    current_wave: int  # -1 before the first wave is issued
    wave_started_at: float | None
    wave_converged_at: float | None
    bake_s: float
    wave_timeout_s: float
    gates: Gates

    @classmethod
    def of_rows(cls, row: dict[str, Any], agents: list[dict[str, Any]]) -> Plan:
        """From a ``rollouts`` row and its ``rollout_agents`` rows."""
        waves: list[list[str]] = []
        for a in sorted(agents, key=lambda a: (a["wave"], a["agent_id"])):
            while len(waves) <= a["wave"]:
                waves.append([])
            waves[a["wave"]].append(a["agent_id"])
        return cls(
            rollout_id=row["id"],
            version=row["version"],
            waves=waves,
            current_wave=row["current_wave"],
            wave_started_at=row["wave_started_at"],
            wave_converged_at=row["wave_converged_at"],
            bake_s=row["bake_s"],
            wave_timeout_s=row["wave_timeout_s"],
            gates=Gates.model_validate_json(row["gates"]),
        )


@dataclass(frozen=True, slots=True)
class GateReport:
    """All issued agents' verdicts at one moment, and the basis they were judged on."""

    basis: str
    control: Control | None
    verdicts: dict[str, Verdict]
    failure: str | None  # why the rollout must roll back, or None

    def as_dict(self, now: float) -> dict[str, Any]:
        return {
            "evaluated_at": now,
            "basis": self.basis,
            "control": self.control.as_dict() if self.control else None,
            "verdicts": {a: v.as_dict() for a, v in self.verdicts.items()},
            "failure": self.failure,
        }


def issued_and_pending(plan: Plan) -> tuple[list[str], list[str]]:
    """Agents issued the new version so far, and the rest (the control candidates)."""
    upto = plan.current_wave + 1
    return (
        [a for wave in plan.waves[:upto] for a in wave],
        [a for wave in plan.waves[upto:] for a in wave],
    )


def judge(
    plan: Plan,
    observations: dict[str, Observation],
    baselines: dict[str, Baseline],
    now: float,
) -> GateReport:
    """Every issued agent's gate verdict, against the control group when there is one."""
    issued, pending = issued_and_pending(plan)
    gates, version = plan.gates, plan.version
    control, basis = find_control(pending, observations, baselines, version, gates, now)
    verdicts = {
        a: evaluate(
            observations.get(a),
            baselines.get(a, Baseline()),
            gates,
            version,
            plan.rollout_id,
            control,
        )
        for a in issued
    }
    failed = [(a, v) for a, v in verdicts.items() if v.state is GateState.FAIL]
    updates = [f"{a}: {v.reason}" for a, v in failed if v.gate == "update"]
    failure = next((f"{a}: {v.reason}" for a, v in failed if v.gate != "update"), None)
    if failure is None and len(updates) > gates.max_failed_updates:
        failure = (
            updates[0]
            if len(updates) == 1
            else f"{len(updates)} failed updates (limit {gates.max_failed_updates}): "
            + "; ".join(updates[:3])
        )
    return GateReport(basis, control, verdicts, failure)


def step(
    plan: Plan,
    observations: dict[str, Observation],
    baselines: dict[str, Baseline],
    now: float,
    gate_report: GateReport | None = None,
) -> Action | None:
    """The one next thing to do for a running rollout (None: keep waiting).

    ``gate_report`` is ``judge(plan, observations, baselines, now)``, passed in when the
    caller also wants to show it.
    """
    if plan.current_wave < 0:
        return Issue(0, plan.waves[0])
    issued, _ = issued_and_pending(plan)
    if gate_report is None:
        gate_report = judge(plan, observations, baselines, now)
    if gate_report.failure is not None:
        return Fail(f"gate failed in wave {plan.current_wave + 1}: {gate_report.failure}", issued)
    wave = plan.waves[plan.current_wave]
    if plan.wave_converged_at is None:
        waiting = [a for a in wave if not converged(observations.get(a), plan.version)]
        if not waiting:
            return MarkConverged(plan.current_wave)
        started = plan.wave_started_at if plan.wave_started_at is not None else now
        if now - started > plan.wave_timeout_s:
            shown = ", ".join(waiting[:5]) + (" ..." if len(waiting) > 5 else "")
            return Fail(
                f"wave {plan.current_wave + 1} did not converge within "
                f"{plan.wave_timeout_s:g} s: {shown}",
                issued,
            )
        return None
    if now - plan.wave_converged_at < plan.bake_s:
        return None
    if plan.gates.min_inferences:
        for agent_id in issued:
            obs = observations.get(agent_id)
            base = baselines.get(agent_id, Baseline())
            results, errors = window(obs, base.inferences, base.errors) if obs else (0, 0)
            done = results - errors
            if done < plan.gates.min_inferences:
                return None
    if plan.current_wave + 1 >= len(plan.waves):
        return Succeed()
    return Issue(plan.current_wave + 1, plan.waves[plan.current_wave + 1])
