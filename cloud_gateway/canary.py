"""Rollout logic as pure functions of (plan, observations, now): wave plans and health gates.

The engine (:mod:`cloud_gateway.rollouts`) feeds it rows from SQLite and a wall clock and
applies the returned actions; tests feed it hand-made observations and a fake clock.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

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
class Observation:
    """What the latest heartbeat says about one agent."""

    online: bool
    version: int | None  # version of the rollout's model it serves
    update: dict[str, Any] | None
    metrics: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Baseline:
    """An agent's counters when the wave was issued, so gates see only what came after."""

    p99_ms: float = 0.0
    nan_outputs: int = 0
    inferences: int = 0
    errors: int = 0
    settled_from: int | None = None  # inference counter when the new version went live

    @classmethod
    def of(cls, metrics: dict[str, Any]) -> Baseline:
        return cls(
            p99_ms=float(metrics.get("p99_ms") or 0.0),
            nan_outputs=int(metrics.get("nan_outputs") or 0),
            inferences=int(metrics.get("inferences") or 0),
            errors=int(metrics.get("errors") or 0),
        )


def _delta(now: Any, then: int) -> int:
    value = int(now or 0)
    return value - then if value >= then else value  # counters reset when an agent restarts


def converged(obs: Observation | None, version: int) -> bool:
    return obs is not None and obs.online and obs.version == version


def gate_failure(
    agent_id: str,
    obs: Observation | None,
    base: Baseline,
    gates: Gates,
    version: int,
    rollout_id: str,
) -> str | None:
    """The first gate this agent breaks, as a human-readable reason, or None."""
    if obs is None:
        return None
    upd = obs.update or {}
    if (
        upd.get("state") == "failed"
        and upd.get("version") == version
        and upd.get("rollout_id") in (None, rollout_id)
        and gates.max_failed_updates == 0
    ):
        return f"{agent_id}: update failed: {upd.get('reason') or 'no reason given'}"
    if not converged(obs, version):
        return None
    m = obs.metrics
    nan = _delta(m.get("nan_outputs"), base.nan_outputs)
    if nan > gates.max_nan_outputs:
        return f"{agent_id}: {nan} NaN outputs since the update (limit {gates.max_nan_outputs})"
    # Latency and error rate are windowed by the agent and still describe the old
    # version right after a swap: judge them only after enough new-version inferences.
    if base.settled_from is None:
        return None
    if _delta(m.get("inferences"), base.settled_from) < gates.min_samples:
        return None
    rate = float(m.get("error_rate") or 0.0)
    if rate > gates.max_error_rate:
        return f"{agent_id}: error rate {rate:.3f} > {gates.max_error_rate:.3f}"
    p99 = float(m.get("p99_ms") or 0.0)
    if gates.max_p99_ms is not None and p99 > gates.max_p99_ms:
        return f"{agent_id}: p99 {p99:.1f} ms > {gates.max_p99_ms:.1f} ms"
    ratio = gates.max_p99_ratio
    if ratio is not None and base.p99_ms > 0:
        limit = max(base.p99_ms * ratio, base.p99_ms + gates.p99_slack_ms)
        if p99 > limit:
            return (
                f"{agent_id}: p99 {p99:.1f} ms > {ratio:g}x its pre-update "
                f"{base.p99_ms:.1f} ms (+{gates.p99_slack_ms:g} ms noise floor)"
            )
    return None


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


def step(
    plan: Plan,
    observations: dict[str, Observation],
    baselines: dict[str, Baseline],
    now: float,
) -> Action | None:
    """The one next thing to do for a running rollout (None: keep waiting)."""
    if plan.current_wave < 0:
        return Issue(0, plan.waves[0])
    issued = [a for wave in plan.waves[: plan.current_wave + 1] for a in wave]
    for agent_id in issued:
        reason = gate_failure(
            agent_id,
            observations.get(agent_id),
            baselines.get(agent_id, Baseline()),
            plan.gates,
            plan.version,
            plan.rollout_id,
        )
        if reason is not None:
            return Fail(f"gate failed in wave {plan.current_wave + 1}: {reason}", issued)
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
            done = _delta(obs.metrics.get("inferences") if obs else 0, base.inferences)
            if done < plan.gates.min_inferences:
                return None
    if plan.current_wave + 1 >= len(plan.waves):
        return Succeed()
    return Issue(plan.current_wave + 1, plan.waves[plan.current_wave + 1])
