"""Rollout logic as pure functions of (plan, observations, now): the step machine that
issues waves (:mod:`cloud_gateway.waves`), bakes them until every agent has a gate
verdict, and fails them on a gate (:mod:`cloud_gateway.gates`) or a timeout.

The engine (:mod:`cloud_gateway.rollouts`) feeds it rows from SQLite and a wall clock and
applies the returned actions; tests feed it hand-made observations and a fake clock.
"""

from __future__ import annotations

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
from cloud_gateway.waves import plan_waves as plan_waves  # re-exported
from cloud_gateway.waves import wave_size as wave_size


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


def _idle(
    plan: Plan, verdict: Verdict, obs: Observation | None, base: Baseline, quiet_over: bool
) -> Verdict:
    """A waiting verdict of an agent with no new-version result at all once the bake and
    the grace after it are over: idle, which passes only if the gates allow it."""
    if not quiet_over or verdict.state is not GateState.WAIT or base.settled_from is None:
        return verdict
    if obs is None or not converged(obs, plan.version):
        return verdict
    errors_from = base.settled_errors if base.settled_errors is not None else base.errors
    if window(obs, base.settled_from, errors_from)[0] > 0:
        return verdict
    g = plan.gates
    then = (
        "passes: allow_idle_agents is on"
        if g.allow_idle_agents
        else "no evidence: allow_idle_agents is off, the wave waits until its timeout"
    )
    return Verdict(
        GateState.IDLE,
        f"idle: no v{plan.version} results during the {plan.bake_s:g} s bake "
        f"+ {g.idle_grace_s:g} s grace; {then}",
        "idle",
    )


def has_evidence(verdict: Verdict | None, gates: Gates) -> bool:
    """Whether a verdict lets a wave pass: judged healthy, or idle when that is allowed."""
    if verdict is None:
        return False
    return verdict.state is GateState.PASS or (
        verdict.state is GateState.IDLE and gates.allow_idle_agents
    )


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
    current = set(plan.waves[plan.current_wave]) if plan.current_wave >= 0 else set()
    quiet_over = plan.wave_converged_at is not None and (
        now >= plan.wave_converged_at + plan.bake_s + gates.idle_grace_s
    )
    verdicts = {}
    for a in issued:
        obs, base = observations.get(a), baselines.get(a, Baseline())
        verdict = evaluate(obs, base, gates, version, plan.rollout_id, control)
        # Earlier waves' bake and grace are long over.
        verdicts[a] = _idle(plan, verdict, obs, base, quiet_over or a not in current)
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
    # Agents whose failed update the gates tolerate (max_failed_updates) never converge
    # and never give evidence: the wave goes on without them.
    tolerated = {a for a, v in gate_report.verdicts.items() if v.gate == "update"}
    if plan.wave_converged_at is None:
        waiting = [
            a
            for a in wave
            if a not in tolerated and not converged(observations.get(a), plan.version)
        ]
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
    bake_end = plan.wave_converged_at + plan.bake_s
    if now < bake_end:
        return None
    # The bake ends on evidence, not on time alone: every agent of the wave needs a verdict.
    missing = _missing_evidence(plan, gate_report, observations, baselines, tolerated)
    if missing:
        if now - bake_end <= plan.wave_timeout_s:
            return None
        shown = "; ".join(f"{a}: {why}" for a, why in list(missing.items())[:3])
        more = f" (+{len(missing) - 3} more)" if len(missing) > 3 else ""
        return Fail(
            f"wave {plan.current_wave + 1}: no gate verdict for {len(missing)} agent(s) "
            f"within the {plan.wave_timeout_s:g} s wave timeout after the bake: {shown}{more}",
            issued,
        )
    if plan.current_wave + 1 >= len(plan.waves):
        return Succeed()
    return Issue(plan.current_wave + 1, plan.waves[plan.current_wave + 1])


def _missing_evidence(
    plan: Plan,
    report: GateReport,
    observations: dict[str, Observation],
    baselines: dict[str, Baseline],
    tolerated: set[str],
) -> dict[str, str]:
    """Agents that keep the bake going, with why: the current wave's without a passing
    (or allowed idle) verdict, and any issued agent short of ``min_inferences``."""
    gates = plan.gates
    missing = {
        a: v.reason if (v := report.verdicts.get(a)) else "not judged"
        for a in plan.waves[plan.current_wave]
        if a not in tolerated and not has_evidence(report.verdicts.get(a), gates)
    }
    if gates.min_inferences:
        for a in issued_and_pending(plan)[0]:
            obs, base = observations.get(a), baselines.get(a, Baseline())
            results, errors = window(obs, base.inferences, base.errors) if obs else (0, 0)
            if a not in tolerated and results - errors < gates.min_inferences:
                missing.setdefault(
                    a, f"{results - errors}/{gates.min_inferences} inferences since issued"
                )
    return missing
