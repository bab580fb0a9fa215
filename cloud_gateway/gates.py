"""Health gates: is a canary worse than the agents that did not get the new version?

Latency and error rate are judged against a concurrent *control group*: agents of the
same rollout still on the old version, observed at the same time. A load burst during
the bake slows canaries and control alike, so it no longer rolls back a good version.
Only without a control group (the last wave, all-at-once, or no eligible agent left)
does a canary fall back to its own pre-update numbers, and its reason says so. NaN
outputs and failed updates are judged absolutely: a bad control never excuses them.
Latency and errors wait for ``min_samples`` new-version results, and a p99 breach must
still hold at ``p99_confirm_samples``; whether a wave may pass is :mod:`canary`'s call.

Everything here is a pure function of observations, baselines and ``now``; every
verdict carries a reason with the numbers it compared, for the rollout API and history.
"""

from __future__ import annotations

import dataclasses
import statistics
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from pydantic import ValidationError

from bus.desired import UpdatePhase, UpdateState
from bus.heartbeat import Metrics
from cloud_gateway.db import loads
from cloud_gateway.fleet import serving_version
from cloud_gateway.schemas import Gates, update_state

_BUSY = (UpdatePhase.DOWNLOADING, UpdatePhase.VERIFYING, UpdatePhase.SWAPPING)
_OWN = "no control group"


def stored_update(value: Any) -> UpdateState | None:
    """A stored heartbeat ``update`` as an UpdateState (None if absent or malformed:
    rows written before heartbeats were validated)."""
    try:
        return None if value is None else update_state(value)
    except ValueError:
        return None


def stored_metrics(text: str | None) -> Metrics:
    """A stored heartbeat's ``metrics`` (:class:`bus.heartbeat.Metrics`, as the agent sent
    them: ``model_fields_set`` says which it reported); empty if absent or malformed
    (rows written before heartbeats were validated)."""
    try:
        return Metrics.model_validate(loads(text, {}))
    except ValidationError:
        return Metrics()


def _delta(now: int, then: int) -> int:
    return now - then if now >= then else now  # counters reset when an agent restarts


@dataclass(frozen=True, slots=True)
class Observation:
    """What the latest heartbeat says about one agent."""

    online: bool
    version: int | None  # version of the rollout's model it serves
    update: UpdateState | None = None
    metrics: Metrics = field(default_factory=Metrics)
    seen_at: float | None = None  # when the gateway received it (None: treat as fresh)

    @classmethod
    def of_row(cls, row: dict[str, Any], model: str) -> Observation:
        """From the agent's row in the fleet table."""
        return cls(
            online=bool(row["online"]),
            version=serving_version(row, model),
            update=stored_update(loads(row["update_state"])),
            metrics=stored_metrics(row["metrics"]),
            seen_at=row["last_seen"],
        )

    @property
    def p99_ms(self) -> float:
        return self.metrics.p99_ms


@dataclass(frozen=True, slots=True)
class Baseline:
    """An agent's counters when a wave was issued (canaries: their own wave; control
    agents: the current one), so gates see only what came after."""

    p99_ms: float = 0.0
    nan_outputs: int = 0
    inferences: int = 0
    errors: int = 0
    settled_from: int | None = None  # inference counter when the new version went live
    settled_errors: int | None = None  # error counter at the same moment
    settled_results: int | None = None  # results and deadlines met at the same moment
    settled_met: int | None = None

    @classmethod
    def of(cls, metrics: Metrics) -> Baseline:
        return cls(
            p99_ms=metrics.p99_ms,
            nan_outputs=metrics.nan_outputs,
            inferences=metrics.inferences,
            errors=metrics.errors,
        )

    @classmethod
    def load(cls, data: dict[str, Any] | None) -> Baseline:
        """From a stored row; unknown keys (a newer gateway's) are ignored."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in (data or {}).items() if k in names})

    def settle(self, metrics: Metrics) -> Baseline:
        return dataclasses.replace(
            self,
            settled_from=metrics.inferences,
            settled_errors=metrics.errors,
            settled_results=metrics.results,
            settled_met=metrics.deadline_met,
        )

    @property
    def error_rate(self) -> float:
        """Lifetime error rate before the update (the no-control-group reference)."""
        total = self.inferences + self.errors
        return self.errors / total if total else 0.0


def window(obs: Observation, inferences_from: int, errors_from: int) -> tuple[int, int]:
    """(results, errors) an agent reported since the given counter values."""
    ok = _delta(obs.metrics.inferences, inferences_from)
    errors = _delta(obs.metrics.errors, errors_from)
    return ok + errors, errors


def converged(obs: Observation | None, version: int) -> bool:
    return obs is not None and obs.online and obs.version == version


@dataclass(frozen=True, slots=True)
class Control:
    """The control group's health, observed alongside the canaries."""

    agents: tuple[str, ...]
    versions: tuple[int, ...]
    p99_ms: float  # median of their current p99 (one noisy agent cannot move it)
    error_rate: float  # pooled over their results since the current wave was issued
    results: int

    def describe(self) -> str:
        on = ", ".join(f"v{v}" for v in self.versions)
        return (
            f"control group of {len(self.agents)} agent(s) on {on}: median p99 "
            f"{self.p99_ms:.1f} ms, error rate {self.error_rate:.3f} over {self.results} results"
        )

    def as_dict(self) -> dict[str, Any]:
        # Not dataclasses.asdict: its deep copy of thousands of agent ids ran every tick.
        return {
            "agents": list(self.agents),
            "versions": list(self.versions),
            "p99_ms": self.p99_ms,
            "error_rate": self.error_rate,
            "results": self.results,
        }


def _eligible(obs: Observation | None, version: int, gates: Gates, now: float) -> bool:
    return (
        obs is not None
        and obs.online
        and obs.version is not None
        and obs.version != version
        # Stale numbers do not describe the bake window; mid-update ones describe neither version.
        and (obs.seen_at is None or now - obs.seen_at <= gates.control_max_age_s)
        and not (obs.update is not None and obs.update.state in _BUSY)
        and obs.p99_ms > 0  # idle agents have no latency to compare with
    )


def find_control(
    pending: list[str],
    observations: dict[str, Observation],
    baselines: dict[str, Baseline],
    version: int,
    gates: Gates,
    now: float,
) -> tuple[Control | None, str]:
    """The control group among the not-yet-issued targets, and how gates will judge."""
    own = "each canary against its own pre-update baseline"
    if not gates.control:
        return None, f"{_OWN} (disabled by the gates): {own}"
    if not pending:
        return None, f"{_OWN} (every target has the new version: last wave or all-at-once): {own}"
    members = [a for a in pending if _eligible(observations.get(a), version, gates, now)]
    if len(members) < gates.min_control_agents:
        return None, (
            f"{_OWN} ({len(members)} of {len(pending)} remaining agents online, fresh and "
            f"serving; need {gates.min_control_agents}): {own}"
        )
    results = errors = 0
    for a in members:
        base = baselines.get(a, Baseline())
        r, e = window(observations[a], base.inferences, base.errors)
        results, errors = results + r, errors + e
    control = Control(
        agents=tuple(members),
        versions=tuple(sorted({v for a in members if (v := observations[a].version)})),
        p99_ms=statistics.median(observations[a].p99_ms for a in members),
        error_rate=errors / results if results else 0.0,
        results=results,
    )
    return control, control.describe()


def _slo_gate(obs: Observation, base: Baseline, gates: Gates, need: int) -> Verdict | None:
    """The SLO-attainment gate: the share of results since the update that met their
    deadline (from the heartbeat's ``results``/``deadline_met`` counters), or None when
    it passes, is off, or cannot judge (an agent that reports no such counters)."""
    floor = gates.min_slo_attainment
    reported = obs.metrics.model_fields_set
    if floor is None or base.settled_results is None or "deadline_met" not in reported:
        return None
    results = _delta(obs.metrics.results, base.settled_results)
    met = _delta(obs.metrics.deadline_met, base.settled_met or 0)
    if results < need:
        return Verdict(GateState.WAIT, f"{results}/{need} results before the SLO gate judges")
    share = min(met, results) / results
    if share < floor:
        return _fail(
            "slo",
            f"SLO attainment {share:.3f} ({met}/{results} results met their deadline since "
            f"the update) < minimum {floor:.3f}",
        )
    return None


class GateState(StrEnum):
    PASS = "pass"
    FAIL = "fail"
    WAIT = "waiting"
    IDLE = "idle"  # no new-version results at all after bake + grace (see canary.judge)


@dataclass(frozen=True, slots=True)
class Verdict:
    state: GateState
    reason: str
    gate: str = ""  # which gate decided: update, nan, error-rate, slo, p99, idle ("" while waiting)

    def as_dict(self) -> dict[str, str]:
        return {"state": self.state.value, "gate": self.gate, "reason": self.reason}


def _fail(gate: str, reason: str) -> Verdict:
    return Verdict(GateState.FAIL, reason, gate)


def evaluate(
    obs: Observation | None,
    base: Baseline,
    gates: Gates,
    version: int,
    rollout_id: str,
    control: Control | None,
) -> Verdict:
    """One issued agent's verdict, with the numbers compared in its reason."""
    if obs is None:
        return Verdict(GateState.WAIT, "no heartbeat yet")
    upd = obs.update
    if (
        upd is not None
        and upd.state is UpdatePhase.FAILED
        and upd.version == version
        and upd.rollout_id in (None, rollout_id)
    ):
        return _fail("update", f"update failed: {upd.reason or 'no reason given'}")
    if not converged(obs, version):
        state = upd.state.value if upd is not None else "unknown"
        return Verdict(GateState.WAIT, f"not on v{version} yet (v{obs.version}, update {state})")
    nan = _delta(obs.metrics.nan_outputs, base.nan_outputs)
    if nan > gates.max_nan_outputs:
        return _fail("nan", f"{nan} NaN outputs since the update (limit {gates.max_nan_outputs})")
    # Latency is windowed by the agent and still describes the old version right after
    # a swap: judge latency and errors only after enough new-version results.
    if base.settled_from is None:
        return Verdict(GateState.WAIT, f"serving v{version}; counting from the next tick")
    errors_from = base.settled_errors if base.settled_errors is not None else base.errors
    results, errors = window(obs, base.settled_from, errors_from)
    need = max(1, gates.min_samples)  # no result at all is no evidence, whatever min_samples
    if results < need:
        return Verdict(GateState.WAIT, f"{results}/{need} new-version results before judging")
    rate = errors / results
    if rate > gates.max_error_rate:
        return _fail(
            "error-rate",
            f"error rate {rate:.3f} ({errors}/{results}) > absolute ceiling "
            f"{gates.max_error_rate:.3f}",
        )
    if control is not None:
        ref_rate, whose = control.error_rate, "the control group's"
    else:
        ref_rate, whose = base.error_rate, f"its own pre-update ({_OWN})"
    rate_limit = ref_rate + gates.max_error_rate_excess
    rate_text = f"error rate {rate:.3f} ({errors}/{results})"
    rate_rule = f"{whose} {ref_rate:.3f} + {gates.max_error_rate_excess:g}"
    if rate > rate_limit:
        return _fail("error-rate", f"{rate_text} > {rate_limit:.3f} = {rate_rule}")
    p99, confirm = obs.p99_ms, max(need, gates.p99_confirm_samples)

    def slow(reason: str) -> Verdict:
        # A swap's transient (cold caches, a neighbour's model load) can top a short
        # latency window: a p99 breach fails only if it still holds at `confirm` results.
        if results < confirm:
            return Verdict(GateState.WAIT, f"{reason}; confirming at {results}/{confirm} results")
        return _fail("p99", reason)

    slo = _slo_gate(obs, base, gates, need)
    if slo is not None:
        return slo
    if gates.max_p99_ms is not None and p99 > gates.max_p99_ms:
        return slow(f"p99 {p99:.1f} ms > absolute limit {gates.max_p99_ms:.1f} ms")
    p99_text = f"p99 {p99:.1f} ms"
    ratio = gates.max_p99_ratio
    if ratio is not None:
        if control is not None:
            ref, whose = control.p99_ms, "the control group's median"
        else:
            ref, whose = base.p99_ms, f"its own pre-update ({_OWN})"
        if ref > 0:
            limit = max(ref * ratio, ref + gates.p99_slack_ms)
            rule = f"max({ratio:g}x, +{gates.p99_slack_ms:g} ms) {whose} {ref:.1f} ms"
            if p99 > limit:
                return slow(f"{p99_text} > {limit:.1f} ms = {rule}")
            p99_text += f" <= {limit:.1f} ms = {rule}"
        else:
            p99_text += f" (no reference p99 from {whose}: ratio gate not applied)"
    return Verdict(GateState.PASS, f"{p99_text}; {rate_text} <= {rate_limit:.3f} = {rate_rule}")
