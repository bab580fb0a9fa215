"""Request and response bodies of the REST API (pydantic; also the OpenAPI schemas)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from bus.desired import MAX_VERSION, ConfigReport, UpdateState, check_live
from bus.heartbeat import Heartbeat
from bus.topics import check_filter
from models.errors import InvalidInput
from models.manifest import validate_model_name


def update_state(value: Any) -> UpdateState:
    """A heartbeat's ``update`` field; unknown keys (a newer agent's) are ignored."""
    if not isinstance(value, dict):
        raise ValueError("update must be a JSON object")
    return UpdateState.model_validate(
        {k: v for k, v in value.items() if k in UpdateState.model_fields}
    )


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


class ConfigView(_Body):
    """An agent's configuration twin: what the gateway asks for and what the agent runs."""

    agent_id: str
    desired: dict[str, Any] | None = Field(
        description="bus.desired.WantedConfig: version, rollout_id, values (null: flags only)"
    )
    reported: dict[str, Any] | None = Field(
        description="bus.desired.ConfigReport from the last heartbeat (null: none reported)"
    )
    status: Literal["in-sync", "pending", "refused", "unknown"]
    reason: str | None = Field(description="why the agent refused the desired config")


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
    config: ConfigView | None = Field(
        default=None, description="configuration twin: desired vs reported live settings"
    )


def _live(v: dict[str, Any]) -> dict[str, Any]:
    try:
        return check_live(v)
    except InvalidInput as exc:
        raise ValueError(exc.message) from None


class ConfigRequest(_Body):
    """Live settings for one agent, laid over its flags; a setting left out goes back
    to the agent's flag (an empty map: flags only)."""

    values: dict[str, Any] = Field(description="live setting -> value (bus.desired.LIVE_SETTINGS)")

    @field_validator("values")
    @classmethod
    def _values(cls, v: dict[str, Any]) -> dict[str, Any]:
        return _live(v)


class ConfigSelectRequest(ConfigRequest):
    """The same live settings on every agent a selector matches (sites, labels, ids)."""

    selector: Selector


class LabelsRequest(_Body):
    labels: dict[str, str]


class AssignRequest(_Body):
    """Serve a model version on one agent, bound to a topic filter (add or move it)."""

    version: int = Field(ge=1, le=MAX_VERSION, strict=True)
    topics: str | None = Field(
        default=None,
        max_length=512,
        description="MQTT topic filter the model answers on the agent (default: unchanged, "
        "or the agent's default model when it does not serve it yet)",
    )

    @field_validator("topics")
    @classmethod
    def _topics(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                check_filter(v)
            except InvalidInput as exc:
                raise ValueError(exc.message) from None
        return v


class AgentDesired(_Body):
    agent_id: str
    desired: dict[str, int] = Field(description="model -> version the gateway asks for")


class Selector(_Body):
    """Which agents a rollout targets; empty lists/maps mean 'any'."""

    sites: list[str] = Field(default_factory=list)
    labels: dict[str, str] = Field(default_factory=dict)
    agents: list[str] = Field(default_factory=list)


class Gates(_Body):
    """Health gates evaluated on every agent of the issued waves.

    Latency and error rate are judged against a concurrent control group (the rollout's
    agents not yet issued the new version, observed at the same time) so a fleet-wide
    slowdown during the bake does not fail a good version; without a control group (last
    wave, all-at-once) each agent is judged against its own pre-update numbers. NaN
    outputs, failed updates and the absolute limits apply whatever the control group does.
    """

    max_error_rate: float = Field(
        default=0.05,
        ge=0,
        description="absolute ceiling on a canary's error rate since its swap",
    )
    max_error_rate_excess: float = Field(
        default=0.02,
        ge=0,
        description=(
            "how far a canary's error rate may exceed the control group's pooled rate over "
            "the same window (without a control group: its own pre-update rate)"
        ),
    )
    max_p99_ms: float | None = Field(default=None, gt=0, description="absolute p99 limit")
    min_slo_attainment: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description=(
            "least share of an agent's results since the update that met their deadline "
            "(absolute, like max_p99_ms; a config that makes the SLO unreachable fails it); "
            "null disables it"
        ),
    )
    max_p99_ratio: float | None = Field(
        default=3.0,
        gt=1,
        description=(
            "p99 limit relative to the control group's median p99 (without a control "
            "group: the agent's own pre-update p99); null disables it"
        ),
    )
    p99_slack_ms: float = Field(
        default=5.0, ge=0, description="noise floor: the ratio gate ignores smaller increases"
    )
    control: bool = Field(
        default=True, description="judge against a concurrent control group when one exists"
    )
    min_control_agents: int = Field(
        default=1, ge=1, description="fewer eligible control agents: use each own baseline"
    )
    control_max_age_s: float = Field(
        default=15.0,
        gt=0,
        description="control agents whose last heartbeat is older are left out of the group",
    )
    max_nan_outputs: int = Field(default=0, ge=0, description="NaN outputs since the swap")
    max_failed_updates: int = Field(default=0, ge=0, description="agent-reported failures")
    min_samples: int = Field(
        default=20,
        ge=0,
        description=(
            "new-version results each agent must report before latency/error gates judge "
            "it; a wave's bake ends only when every agent has a verdict"
        ),
    )
    p99_confirm_samples: int = Field(
        default=40,
        ge=0,
        description=(
            "a p99 over its limit fails a canary only if it still is once the canary has "
            "this many new-version results (before: 'waiting'), so a swap's transient "
            "does not roll back a good version"
        ),
    )
    allow_idle_agents: bool = Field(
        default=False,
        description=(
            "let agents with no new-version results at all during bake + idle_grace_s pass "
            "the wave as 'idle' (default: the wave waits for evidence until its timeout)"
        ),
    )
    idle_grace_s: float = Field(
        default=10.0, ge=0, description="after the bake, how long a silent agent has to report"
    )
    min_inferences: int = Field(
        default=0, ge=0, description="inferences each agent must serve before the bake passes"
    )


class RolloutRequest(_Body):
    model: str
    # Strict: " 1", "1", 1.0 and true are not the version 1 (issue 16, item 12).
    version: int = Field(ge=1, le=MAX_VERSION, strict=True)
    topics: str | None = Field(
        default=None,
        max_length=1024,
        description="MQTT topic filter the model is bound to on each agent (default: unchanged)",
    )
    strategy: Literal["all-at-once", "canary"] = "canary"

    @field_validator("topics")
    @classmethod
    def _rollout_topics(cls, v: str | None) -> str | None:
        return AssignRequest._topics(v)  # the same filter rule

    waves: list[str] = Field(
        default_factory=lambda: ["10%", "50%", "100%"],
        description="cumulative wave sizes: 'N%' of the targets or a count 'N'",
    )
    selector: Selector = Field(default_factory=Selector)
    bake_s: float = Field(default=30.0, ge=0, description="healthy time before the next wave")
    wave_timeout_s: float | None = Field(
        default=None,
        gt=0,
        description=(
            "how long a wave may take to converge, and again after its bake to get a gate "
            "verdict for every agent; either expiring rolls the rollout back "
            "(default: the gateway's wave_timeout_s)"
        ),
    )
    gates: Gates = Field(default_factory=Gates)

    @field_validator("model")
    @classmethod
    def _model(cls, v: str) -> str:
        return validate_model_name(v)


class ConfigRolloutRequest(_Body):
    """Roll live settings out in waves, judged by the same gates as a model: a config that
    breaks them is rolled back to each agent's previous config."""

    values: dict[str, Any] = Field(description="live setting -> value (bus.desired.LIVE_SETTINGS)")
    strategy: Literal["all-at-once", "canary"] = "canary"
    waves: list[str] = Field(
        default_factory=lambda: ["10%", "50%", "100%"],
        description="cumulative wave sizes: 'N%' of the targets or a count 'N'",
    )
    selector: Selector = Field(default_factory=Selector)
    bake_s: float = Field(default=30.0, ge=0, description="healthy time before the next wave")
    wave_timeout_s: float | None = Field(
        default=None, gt=0, description="as for a model rollout (default: the gateway's)"
    )
    gates: Gates = Field(default_factory=Gates)

    @field_validator("values")
    @classmethod
    def _values(cls, v: dict[str, Any]) -> dict[str, Any]:
        return _live(v)


class GateVerdict(_Body):
    state: Literal["pass", "fail", "waiting", "idle"]
    gate: str = Field(
        description="the deciding gate: update, nan, error-rate, slo, p99, idle or empty (waiting)"
    )
    reason: str = Field(description="what was compared, with the numbers")


class ControlGroup(_Body):
    agents: list[str]
    versions: list[int]
    p99_ms: float = Field(description="median of the control agents' p99")
    error_rate: float = Field(description="pooled over the current wave's window")
    results: int


class GateStatus(_Body):
    """The latest gate evaluation (live while running, as recorded once finished)."""

    evaluated_at: float
    basis: str = Field(description="control group or own-baseline fallback, and why")
    control: ControlGroup | None
    verdicts: dict[str, GateVerdict] = Field(description="agent id -> verdict")
    failure: str | None


class RolloutAgent(_Body):
    agent_id: str
    wave: int
    previous_version: int | None
    state: str
    reason: str | None
    issued_at: float | None
    converged_at: float | None
    gate: GateVerdict | None = None


class RolloutInfo(_Body):
    id: str
    kind: Literal["model", "config"] = Field(
        default="model", description="what rolls out: a model version or live settings"
    )
    model: str = Field(description="the model (empty for a config rollout)")
    version: int = Field(description="model version, or the config version the agents get")
    config: dict[str, Any] | None = Field(
        default=None, description="a config rollout's live settings"
    )
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
    gate: GateStatus | None = None
    agents: list[RolloutAgent] | None = None
    events: list[dict[str, Any]] | None = None


class RollbackRequest(_Body):
    model: str
    rollout_id: str | None = Field(default=None, description="default: the model's latest")


class StatusReport(Heartbeat):
    """An agent heartbeat (``bus.heartbeat.Heartbeat``, the JSON of fleet/{agent}/status)
    with the gateway's own checks of the update and config sections. ``labels`` is read
    only to be ignored: labels are the admin's."""

    labels: dict[str, str] | None = None

    @field_validator("config", mode="before")
    @classmethod
    def _config(cls, v: Any) -> dict[str, Any] | None:
        if v is None:
            return None
        if not isinstance(v, dict):
            raise ValueError("config must be a JSON object")
        # Unknown keys (a newer agent's) are ignored, the known ones checked.
        known = {k: x for k, x in v.items() if k in ConfigReport.model_fields}
        return ConfigReport.model_validate(known).as_dict()

    @field_validator("update", mode="before")
    @classmethod
    def _update(cls, v: Any) -> dict[str, Any] | None:
        # Checked against the shared UpdateState so a bad phase is refused here, not
        # misread by a gate later; stored normalised as its JSON form.
        return None if v is None else update_state(v).as_dict()


class Accepted(_Body):
    ok: bool = True
    detail: str = ""
