"""Request and response bodies of the REST API (pydantic; also the OpenAPI schemas)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from models.manifest import validate_model_name


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ErrorBody(_Body):
    error: str = Field(description="machine-readable reason, e.g. bad-signature")
    status: str = Field(description="status kind, e.g. INVALID_ARGUMENT")
    message: str


class VersionInfo(_Body):
    name: str
    version: int
    sha256: str = Field(description="sha256 of the bundle file")
    size: int
    signer: str = Field(description="key id of the signing key")
    uploaded_at: float
    url: str = Field(description="download URL of the bundle (agent role)")
    in_use: bool = Field(description="a deployment or rollout refers to this version")
    manifest: dict[str, Any] | None = None


class ModelSummary(_Body):
    name: str
    versions: list[int]
    latest: int


class AgentInfo(_Body):
    agent_id: str
    site: str
    labels: dict[str, str]
    online: bool
    models: dict[str, Any]
    update: dict[str, Any] | None
    health: dict[str, Any]
    metrics: dict[str, Any]
    last_seen: float
    desired: dict[str, int] = Field(description="model -> version the gateway asks for")


class LabelsRequest(_Body):
    labels: dict[str, str]


class Selector(_Body):
    """Which agents a rollout targets; empty lists/maps mean 'any'."""

    sites: list[str] = Field(default_factory=list)
    labels: dict[str, str] = Field(default_factory=dict)
    agents: list[str] = Field(default_factory=list)


class Gates(_Body):
    """Health gates evaluated on every agent of an issued wave."""

    max_error_rate: float = Field(default=0.05, ge=0, description="window error rate")
    max_p99_ms: float | None = Field(default=None, gt=0, description="absolute p99 limit")
    max_p99_ratio: float | None = Field(
        default=3.0, gt=1, description="p99 limit relative to the agent's pre-update p99"
    )
    p99_slack_ms: float = Field(
        default=5.0, ge=0, description="noise floor: the ratio gate ignores smaller increases"
    )
    max_nan_outputs: int = Field(default=0, ge=0, description="NaN outputs since the swap")
    max_failed_updates: int = Field(default=0, ge=0, description="agent-reported failures")
    min_samples: int = Field(
        default=20, ge=0, description="new-version inferences before latency/error gates apply"
    )
    min_inferences: int = Field(
        default=0, ge=0, description="inferences each agent must serve before the bake passes"
    )


class RolloutRequest(_Body):
    model: str
    version: int = Field(ge=1)
    strategy: Literal["all-at-once", "canary"] = "canary"
    waves: list[str] = Field(
        default_factory=lambda: ["10%", "50%", "100%"],
        description="cumulative wave sizes: 'N%' of the targets or a count 'N'",
    )
    selector: Selector = Field(default_factory=Selector)
    bake_s: float = Field(default=30.0, ge=0, description="healthy time before the next wave")
    wave_timeout_s: float | None = Field(default=None, gt=0)
    gates: Gates = Field(default_factory=Gates)

    @field_validator("model")
    @classmethod
    def _model(cls, v: str) -> str:
        return validate_model_name(v)


class RolloutAgent(_Body):
    agent_id: str
    wave: int
    previous_version: int | None
    state: str
    reason: str | None
    issued_at: float | None
    converged_at: float | None


class RolloutInfo(_Body):
    id: str
    model: str
    version: int
    strategy: str
    waves: list[str]
    selector: Selector
    gates: Gates
    bake_s: float
    wave_timeout_s: float
    state: str
    current_wave: int
    wave_count: int
    reason: str | None
    created_at: float
    updated_at: float
    finished_at: float | None
    agents: list[RolloutAgent] | None = None
    events: list[dict[str, Any]] | None = None


class RollbackRequest(_Body):
    model: str
    rollout_id: str | None = Field(default=None, description="default: the model's latest")


class StatusReport(BaseModel):
    """An agent heartbeat (same JSON as fleet/{agent}/status)."""

    model_config = ConfigDict(extra="allow")

    agent_id: str
    site: str = ""
    online: bool = True
    ts: float | None = None
    labels: dict[str, str] | None = None
    models: dict[str, Any] = Field(default_factory=dict)
    update: dict[str, Any] | None = None
    health: dict[str, Any] = Field(default_factory=dict)
    metrics: dict[str, Any] = Field(default_factory=dict)


class Accepted(_Body):
    ok: bool = True
    detail: str = ""
