"""The heartbeat: what an agent reports on ``fleet/{agent}/status`` (retained, QoS 1).

Produced by ``edge_agent.ops.status.heartbeat_doc`` (and, with simulated numbers, by
``simulators.lite_agent``); consumed by the gateway (``cloud_gateway.schemas.StatusReport``
extends it with its own checks; fleet registry, heartbeat history, rollout gates) and by
``simulators.collector``. The metrics are the rollout gates' inputs: counters since the
agent started (``results``, ``deadline_met``, ``errors``, ``nan_outputs``), so a gate can
judge the window since an update from two heartbeats, and the latency quantiles of the
agent's recent results. Unknown fields are kept (a newer agent may report more); every
known one is checked, so a gate never reads a string where it expects a number.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class Metrics(_Open):
    """One model's (or, summed, the agent's) gate inputs."""

    inferences: int = Field(default=0, ge=0)
    errors: int = Field(default=0, ge=0)
    nan_outputs: int = Field(default=0, ge=0, description="results with non-finite outputs")
    p50_ms: float = Field(default=0.0, ge=0, allow_inf_nan=False)
    p99_ms: float = Field(default=0.0, ge=0, allow_inf_nan=False)
    error_rate: float = Field(default=0.0, ge=0, le=1)
    slo_attainment: float = Field(default=1.0, ge=0, le=1)
    offload_share: float = Field(default=0.0, ge=0, le=1)
    results: int = Field(default=0, ge=0)
    deadline_met: int = Field(default=0, ge=0)


class ServedModel(_Open):
    """One model the agent serves."""

    version: int | None = None
    state: str = "serving"
    topics: str | None = Field(default=None, description="MQTT filter the model answers")
    metrics: Metrics = Field(default_factory=Metrics)


class Health(_Open):
    ready: bool = True
    broker: bool = True
    cloud: str = Field(default="none", description="the offload breaker: closed/open/...")


class Heartbeat(_Open):
    """The whole ``fleet/{agent}/status`` document."""

    agent_id: str = Field(min_length=1, max_length=128)
    site: str = ""
    online: bool = True
    ts: float | None = None
    models: dict[str, ServedModel] = Field(default_factory=dict)
    update: dict[str, Any] | None = Field(
        default=None,
        description="bus.desired.UpdateState: rollout_id, model, version, state, reason",
    )
    health: Health = Field(default_factory=Health)
    metrics: Metrics = Field(default_factory=Metrics)
    cloud: dict[str, Any] | None = Field(
        default=None, description="the offload client: target, breaker, RTT (informative)"
    )
    config: dict[str, Any] | None = Field(
        default=None, description="bus.desired.ConfigReport: the agent's configuration twin"
    )
    # ``dashboard_url`` (the agent's page) travels as an extra field: the gateway cleans
    # it itself and keeps a heartbeat whose link is unusable (cloud_gateway.heartbeats).

    def as_dict(self) -> dict[str, Any]:
        """The JSON form of what the producer set (nothing added by defaults)."""
        return self.model_dump(mode="json", exclude_unset=True)
