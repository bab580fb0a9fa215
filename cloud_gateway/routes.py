"""The ONE route table of the REST API: enforcement (roles) and the OpenAPI document both
come from it, so the docs cannot drift from what the server checks.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from aiohttp import web
from pydantic import BaseModel

from cloud_gateway import handlers as h
from cloud_gateway import schemas as s
from cloud_gateway.auth import Role
from cloud_gateway.health import readyz
from cloud_gateway.heartbeats import AgentHistory, fleet_history

if TYPE_CHECKING:
    from cloud_gateway.context import Gateway

Handler = Callable[[web.Request, "Gateway"], Awaitable[web.StreamResponse]]

#: Marker for routes whose body or response is a bundle file, not JSON.
BINARY = "binary"


@dataclass(frozen=True, slots=True)
class Route:
    method: str
    path: str  # OpenAPI style: /api/v1/models/{name}
    role: Role | None  # None: public
    summary: str
    handler: Handler
    request: type[BaseModel] | str | None = None
    response: type[BaseModel] | str | None = None
    many: bool = False  # response is a list of `response`
    status: int = 200
    tag: str = "misc"

    @property
    def mutating(self) -> bool:
        return self.method in ("POST", "PUT", "PATCH", "DELETE")

    @property
    def operation_id(self) -> str:
        return self.handler.__name__


ROUTES: tuple[Route, ...] = (
    Route("GET", "/healthz", None, "Liveness probe", h.healthz, tag="ops"),
    Route("GET", "/readyz", None, "Readiness: DB, broker and engine up", readyz, tag="ops"),
    Route("GET", "/metrics", None, "Prometheus metrics (text format)", h.metrics, tag="ops"),
    Route("GET", "/openapi.json", None, "This OpenAPI document", h.openapi, tag="ops"),
    Route(
        "GET",
        "/api/v1/models",
        Role.VIEWER,
        "List models and their versions",
        h.list_models,
        response=s.ModelSummary,
        many=True,
        tag="registry",
    ),
    Route(
        "POST",
        "/api/v1/models",
        Role.ADMIN,
        "Upload a signed bundle (the file is the request body); verified before it is stored",
        h.upload_bundle,
        request=BINARY,
        response=s.VersionInfo,
        status=201,
        tag="registry",
    ),
    Route(
        "GET",
        "/api/v1/models/{name}/versions",
        Role.VIEWER,
        "List the versions of a model",
        h.list_versions,
        response=s.VersionInfo,
        many=True,
        tag="registry",
    ),
    Route(
        "GET",
        "/api/v1/models/{name}/versions/{version}",
        Role.VIEWER,
        "One version with its manifest",
        h.get_version,
        response=s.VersionInfo,
        tag="registry",
    ),
    Route(
        "DELETE",
        "/api/v1/models/{name}/versions/{version}",
        Role.ADMIN,
        "Delete a version no deployment or rollout uses",
        h.delete_version,
        response=s.Accepted,
        tag="registry",
    ),
    Route(
        "GET",
        "/api/v1/models/{name}/versions/{version}/bundle",
        Role.AGENT,
        "Download the bundle file (an enrolled agent's token may do only this and report)",
        h.download_bundle,
        response=BINARY,
        tag="registry",
    ),
    Route(
        "GET",
        "/api/v1/fleet",
        Role.VIEWER,
        "All agents with their last heartbeat",
        h.list_agents,
        response=s.AgentInfo,
        many=True,
        tag="fleet",
    ),
    Route(
        "GET",
        "/api/v1/fleet-history",
        Role.VIEWER,
        "Every agent's last 10 minutes: SLO attainment, offload share, versions, dashboard URL",
        fleet_history,
        response=AgentHistory,
        many=True,
        tag="fleet",
    ),
    Route(
        "GET",
        "/api/v1/fleet/{agent_id}",
        Role.VIEWER,
        "One agent",
        h.get_agent,
        response=s.AgentInfo,
        tag="fleet",
    ),
    Route(
        "POST",
        "/api/v1/fleet/{agent_id}/status",
        Role.AGENT,
        "Report a heartbeat over HTTP (same JSON as fleet/{agent}/status); only with the "
        "agent's own enrolled token; labels in it are ignored",
        h.report_status,
        request=s.StatusReport,
        response=s.AgentInfo,
        tag="fleet",
    ),
    Route(
        "PUT",
        "/api/v1/fleet/{agent_id}/labels",
        Role.ADMIN,
        "Set an agent's labels (used by rollout selectors)",
        h.set_labels,
        request=s.LabelsRequest,
        response=s.AgentInfo,
        tag="fleet",
    ),
    Route(
        "PUT",
        "/api/v1/fleet/{agent_id}/models/{name}",
        Role.ADMIN,
        "Serve a model version on one agent, bound to a topic filter (add or move it)",
        h.assign_model,
        request=s.AssignRequest,
        response=s.AgentDesired,
        tag="fleet",
    ),
    Route(
        "DELETE",
        "/api/v1/fleet/{agent_id}/models/{name}",
        Role.ADMIN,
        "Stop serving a model on one agent (its readings become no-model dead letters)",
        h.unassign_model,
        response=s.AgentDesired,
        tag="fleet",
    ),
    Route(
        "GET",
        "/api/v1/fleet/{agent_id}/config",
        Role.VIEWER,
        "An agent's configuration twin: desired live settings vs what its heartbeat reports",
        h.get_config,
        response=s.ConfigView,
        tag="config",
    ),
    Route(
        "PUT",
        "/api/v1/fleet/{agent_id}/config",
        Role.ADMIN,
        "Set an agent's live settings over its flags (published in its signed desired state)",
        h.set_config,
        request=s.ConfigRequest,
        response=s.ConfigView,
        tag="config",
    ),
    Route(
        "DELETE",
        "/api/v1/fleet/{agent_id}/config",
        Role.ADMIN,
        "Drop an agent's configuration twin: it goes back to its flags",
        h.clear_config,
        response=s.ConfigView,
        tag="config",
    ),
    Route(
        "PUT",
        "/api/v1/config",
        Role.ADMIN,
        "Set the same live settings on every agent a selector (sites, labels, ids) matches",
        h.set_selected_config,
        request=s.ConfigSelectRequest,
        response=s.ConfigView,
        many=True,
        tag="config",
    ),
    Route(
        "GET",
        "/api/v1/rollouts",
        Role.VIEWER,
        "Rollout history, newest first",
        h.list_rollouts,
        response=s.RolloutInfo,
        many=True,
        tag="rollouts",
    ),
    Route(
        "POST",
        "/api/v1/rollouts",
        Role.ADMIN,
        "Start a rollout (canary or all-at-once)",
        h.start_rollout,
        request=s.RolloutRequest,
        response=s.RolloutInfo,
        status=201,
        tag="rollouts",
    ),
    Route(
        "POST",
        "/api/v1/config/rollouts",
        Role.ADMIN,
        "Roll live settings out in canary waves, gated like a model (rolled back on a "
        "failed gate or a refused config); follow it under /api/v1/rollouts/{id}",
        h.start_config_rollout,
        request=s.ConfigRolloutRequest,
        response=s.RolloutInfo,
        status=201,
        tag="config",
    ),
    Route(
        "GET",
        "/api/v1/rollouts/{rollout_id}",
        Role.VIEWER,
        "A rollout with its agents and events",
        h.get_rollout,
        response=s.RolloutInfo,
        tag="rollouts",
    ),
    Route(
        "POST",
        "/api/v1/rollouts/{rollout_id}/rollback",
        Role.ADMIN,
        "Roll every agent this rollout touched back to its previous version",
        h.rollback_rollout,
        response=s.RolloutInfo,
        tag="rollouts",
    ),
    Route(
        "POST",
        "/api/v1/rollback",
        Role.ADMIN,
        "Roll a model back to its previous version (its latest rollout by default)",
        h.rollback_model,
        request=s.RollbackRequest,
        response=s.RolloutInfo,
        tag="rollouts",
    ),
)
