"""Routing policies: pure functions of observed state that pick LOCAL, REMOTE, HEDGE or SHED.

A policy never reads a clock or does I/O: everything it needs arrives in :class:`Observed`
(``now`` included), so every decision is reproducible in unit tests and simulations.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

from edge_agent.routing.estimates import OffloadBudget, ServiceTimeModel
from models.errors import ConfigError

__all__ = [
    "POLICIES",
    "Cascade",
    "Decision",
    "Observed",
    "OffloadBudget",
    "Policy",
    "Route",
    "ServiceTimeModel",
    "make_policy",
]


class Route(StrEnum):
    LOCAL = "local"
    REMOTE = "remote"
    HEDGE = "hedge"  # send remote, keep a local fallback ready
    SHED = "shed"  # the deadline cannot be met: run degraded/late, flagged, never dropped


@dataclass(frozen=True)
class Decision:
    route: Route
    reason: str
    expected_late: bool = False  # the caller should flag the answer as late


@dataclass(frozen=True)
class Observed:
    now: float  # monotonic s
    deadline: float  # absolute monotonic deadline of the batch's earliest request
    batch_size: int
    local_queue_s: float  # estimated wait before local compute can start
    local_service_s: float  # estimated local compute time for this batch size (load-inflated)
    remote_configured: bool
    remote_available: bool  # breaker allows a call
    remote_rtt_s: float  # EWMA round trip incl. server time
    remote_p95_s: float
    budget_ok: bool  # offload budget has room for this batch
    node_pressure: float = 0.0  # 0..1 (CPU/GPU saturation, thermal throttling)
    confidence: float | None = None  # cascade policy: edge model's top probability

    @property
    def slack_s(self) -> float:
        return self.deadline - self.now

    @property
    def local_eta_s(self) -> float:
        return self.local_queue_s + self.local_service_s


class Policy(Protocol):
    name: str

    def decide(self, obs: Observed) -> Decision: ...


def _remote_blocker(obs: Observed) -> str | None:
    """Why the remote cannot take this batch now, or None when it can."""
    if not obs.remote_configured:
        return "no-remote"
    if not obs.remote_available:
        return "breaker-open"
    if not obs.budget_ok:
        return "budget-exhausted"
    return None


@dataclass(frozen=True)
class LocalOnly:
    name: str = "local-only"

    def decide(self, obs: Observed) -> Decision:
        late = obs.local_eta_s > obs.slack_s
        return Decision(Route.LOCAL, "policy-local-only", expected_late=late)


@dataclass(frozen=True)
class CloudOnly:
    name: str = "cloud-only"

    def decide(self, obs: Observed) -> Decision:
        blocker = _remote_blocker(obs)
        if blocker is not None:
            late = obs.local_eta_s > obs.slack_s
            return Decision(Route.LOCAL, f"fallback-{blocker}", expected_late=late)
        return Decision(Route.REMOTE, "policy-cloud-only", obs.remote_rtt_s > obs.slack_s)


@dataclass(frozen=True)
class Threshold:
    """The static baseline: offload when the local queue wait exceeds a fixed threshold."""

    queue_threshold_s: float = 0.05
    name: str = "threshold"

    def decide(self, obs: Observed) -> Decision:
        if obs.local_queue_s <= self.queue_threshold_s:
            return Decision(Route.LOCAL, "queue-below-threshold", obs.local_eta_s > obs.slack_s)
        blocker = _remote_blocker(obs)
        if blocker is not None:
            return Decision(Route.LOCAL, blocker, obs.local_eta_s > obs.slack_s)
        return Decision(Route.REMOTE, "queue-above-threshold", obs.remote_rtt_s > obs.slack_s)


@dataclass(frozen=True)
class SloAware:
    """Meet each batch's deadline as cheaply as possible (local first; the cloud costs).

    * local ETA within ``(1 - hedge_margin)`` of the slack -> LOCAL;
    * otherwise, if the remote's tail (p95) fits with the same margin -> REMOTE;
    * if the remote's mean fits and local fits too (both near the deadline) -> HEDGE;
    * if only the remote's mean fits -> HEDGE (a late local answer is the fallback);
    * if only local fits -> LOCAL; nothing fits -> SHED, flagged late.
    Node pressure at or above ``pressure_limit`` prefers a safe remote even when local fits.
    """

    hedge_margin: float = 0.2
    pressure_limit: float = 0.9
    name: str = "slo-aware"

    def decide(self, obs: Observed) -> Decision:
        slack = obs.slack_s
        if slack <= 0:
            return Decision(Route.SHED, "deadline-passed", expected_late=True)
        safe = slack * (1.0 - self.hedge_margin)
        local_eta = obs.local_eta_s
        blocker = _remote_blocker(obs)
        remote_safe = blocker is None and max(obs.remote_p95_s, obs.remote_rtt_s) <= safe
        remote_fits = blocker is None and obs.remote_rtt_s <= slack
        if local_eta <= safe:
            if remote_safe and obs.node_pressure >= self.pressure_limit:
                return Decision(Route.REMOTE, "node-pressure")
            return Decision(Route.LOCAL, "local-meets-deadline")
        if remote_safe:
            return Decision(Route.REMOTE, "local-late-remote-fits")
        local_fits = local_eta <= slack
        if remote_fits:
            return Decision(Route.HEDGE, "both-near-deadline" if local_fits else "remote-tail-risk")
        if local_fits:
            return Decision(Route.LOCAL, blocker or "remote-too-slow")
        reason = "infeasible" if blocker is None else f"infeasible-{blocker}"
        return Decision(Route.SHED, reason, expected_late=True)


@dataclass(frozen=True)
class Cascade:
    """Edge model first, low-confidence rows to the (larger) cloud model; load-aware.

    A batch meets this policy twice:

    * before the edge model runs (``obs.confidence is None``): routed exactly like
      :class:`SloAware` - when the local device cannot make the deadline the batch goes to
      the cloud model directly (the cascade would only add the edge compute to a late
      answer); a local choice that meets the deadline is reported as ``edge-first``;
    * after a local batch of a classifier ran, for its rows whose top probability is
      below ``min_confidence`` (``obs.confidence`` is the highest of them,
      ``obs.deadline`` their earliest deadline): REMOTE ``escalated-low-confidence`` when
      the cloud is usable and its mean RTT fits the remaining slack, else LOCAL
      ``low-confidence-kept:<why>`` (the edge answer stands). At or above
      ``min_confidence`` the answer is LOCAL ``confident``.

    ``min_confidence`` above 1 escalates every row (useful to route all inputs through
    the edge model as a filter-less pre-pass, and in tests).
    """

    min_confidence: float = 0.8
    hedge_margin: float = 0.2
    pressure_limit: float = 0.9
    name: str = "cascade"
    routing: SloAware = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Frozen: the routing half is built once, not per batch.
        object.__setattr__(self, "routing", SloAware(self.hedge_margin, self.pressure_limit))

    def decide(self, obs: Observed) -> Decision:
        if obs.confidence is None:
            d = self.routing.decide(obs)
            if d.route is Route.LOCAL and d.reason == "local-meets-deadline":
                return Decision(Route.LOCAL, "edge-first")
            return d
        return self.escalate(obs)

    def escalate(self, obs: Observed) -> Decision:
        """The after-the-edge-model decision for low-confidence rows (see the class doc)."""
        conf = obs.confidence
        if conf is not None and conf >= self.min_confidence:
            return Decision(Route.LOCAL, "confident")
        blocker = _remote_blocker(obs)
        if blocker is not None:
            return Decision(Route.LOCAL, f"low-confidence-kept:{blocker}")
        if obs.remote_rtt_s > obs.slack_s:
            return Decision(Route.LOCAL, "low-confidence-kept:no-time", obs.slack_s <= 0)
        return Decision(Route.REMOTE, "escalated-low-confidence")


POLICIES: dict[str, type[Any]] = {
    "local-only": LocalOnly,
    "cloud-only": CloudOnly,
    "threshold": Threshold,
    "slo-aware": SloAware,
    "cascade": Cascade,
}


def make_policy(name: str = "slo-aware", **params: Any) -> Policy:
    """Build a policy by name; ``params`` are its fields (e.g. ``queue_threshold_s``)."""
    cls = POLICIES.get(name)
    if cls is None:
        raise ConfigError(f"unknown policy {name!r}; choose one of {sorted(POLICIES)}")
    try:
        return cls(**params)  # type: ignore[no-any-return]
    except TypeError as exc:
        raise ConfigError(f"bad parameters for policy {name!r}: {exc}") from exc
