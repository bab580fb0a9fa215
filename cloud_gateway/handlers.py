"""HTTP handlers: convert requests to calls on the gateway core and results to JSON.

Errors are raised as models.errors subclasses and translated once by the middleware in
:mod:`cloud_gateway.app`; handlers never build error responses themselves.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, TypeVar

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ValidationError

from bus.desired import MAX_VERSION
from cloud_gateway.auth import PRINCIPAL
from cloud_gateway.config import view as config_view
from cloud_gateway.config import wanted_config
from cloud_gateway.db import loads
from cloud_gateway.fleet import agent_view
from cloud_gateway.registry import validate_name
from cloud_gateway.schemas import (
    AssignRequest,
    ConfigRequest,
    ConfigRolloutRequest,
    ConfigSelectRequest,
    LabelsRequest,
    RollbackRequest,
    RolloutRequest,
    StatusReport,
)
from models.errors import BundleTooLarge, InvalidInput, PermissionDenied

if TYPE_CHECKING:
    from cloud_gateway.context import Gateway

M = TypeVar("M", bound=BaseModel)


async def _body(request: web.Request, model: type[M]) -> M:
    try:
        data = json.loads(await request.read())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise InvalidInput("request body must be JSON") from None
    except RecursionError:
        raise InvalidInput("request body is nested too deeply") from None
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        detail = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in exc.errors()
        )
        raise InvalidInput(f"invalid {model.__name__}: {detail}") from None


#: ASCII digits only: int() would also take " 1", "1_0" and full-width digits.
_VERSION = re.compile(r"[1-9][0-9]{0,9}")


def _version(request: web.Request) -> tuple[str, int]:
    name = validate_name(request.match_info["name"])
    text = request.match_info["version"]
    if not _VERSION.fullmatch(text) or int(text) > MAX_VERSION:
        raise InvalidInput(f"version must be an integer from 1 to {MAX_VERSION}")
    return name, int(text)


def _version_view(gw: Gateway, row: dict[str, Any], *, manifest: bool) -> dict[str, Any]:
    out = {k: row[k] for k in ("name", "version", "sha256", "size", "signer", "uploaded_at")}
    out["url"] = gw.bundle_url(row["name"], row["version"])
    out["in_use"] = gw.registry.in_use(row["name"], row["version"]) is not None
    if manifest:
        out["manifest"] = loads(row["manifest"])
    return out


async def healthz(request: web.Request, gw: Gateway) -> web.StreamResponse:
    return web.json_response({"ok": True, "broker": gw.bus.connected if gw.bus else False})


async def openapi(request: web.Request, gw: Gateway) -> web.StreamResponse:
    return web.json_response(gw.openapi())


async def list_models(request: web.Request, gw: Gateway) -> web.StreamResponse:
    return web.json_response(
        [
            {"name": name, "versions": versions, "latest": max(versions)}
            for name, versions in gw.registry.models().items()
        ]
    )


async def upload_bundle(request: web.Request, gw: Gateway) -> web.StreamResponse:
    if request.content_length is not None and request.content_length > gw.registry.max_bytes:
        raise BundleTooLarge(f"bundle larger than the limit of {gw.registry.max_bytes} bytes")

    async def chunks() -> AsyncIterator[bytes]:
        async for chunk in request.content.iter_chunked(1 << 20):
            yield chunk

    row, created = await gw.registry.upload(chunks())
    return web.json_response(_version_view(gw, row, manifest=True), status=201 if created else 200)


async def list_versions(request: web.Request, gw: Gateway) -> web.StreamResponse:
    rows = gw.registry.versions(validate_name(request.match_info["name"]))
    return web.json_response([_version_view(gw, r, manifest=False) for r in rows])


async def get_version(request: web.Request, gw: Gateway) -> web.StreamResponse:
    return web.json_response(_version_view(gw, gw.registry.get(*_version(request)), manifest=True))


async def delete_version(request: web.Request, gw: Gateway) -> web.StreamResponse:
    name, version = _version(request)
    gw.registry.delete(name, version)
    return web.json_response({"ok": True, "detail": f"deleted {name}:{version}"})


async def download_bundle(request: web.Request, gw: Gateway) -> web.StreamResponse:
    name, version = _version(request)
    row = gw.registry.get(name, version)
    return web.FileResponse(
        gw.registry.blob_path(row["sha256"]),
        headers={
            "Content-Type": "application/octet-stream",
            "Content-Disposition": f'attachment; filename="{name}-{version}.bundle"',
            "X-Bundle-Sha256": row["sha256"],
        },
    )


def _agent(gw: Gateway, row: dict[str, Any]) -> dict[str, Any]:
    config = config_view(
        row["agent_id"], wanted_config(gw.db, row["agent_id"]), loads(row.get("config"))
    )
    return agent_view(row, gw.engine.desired_of(row["agent_id"]), config)


async def get_config(request: web.Request, gw: Gateway) -> web.StreamResponse:
    return web.json_response(gw.config.get(request.match_info["agent_id"]))


async def set_config(request: web.Request, gw: Gateway) -> web.StreamResponse:
    body = await _body(request, ConfigRequest)
    return web.json_response(gw.config.set(request.match_info["agent_id"], body.values))


async def clear_config(request: web.Request, gw: Gateway) -> web.StreamResponse:
    return web.json_response(gw.config.clear(request.match_info["agent_id"]))


async def set_selected_config(request: web.Request, gw: Gateway) -> web.StreamResponse:
    body = await _body(request, ConfigSelectRequest)
    return web.json_response(gw.config.set_selected(body.selector, body.values))


async def list_agents(request: web.Request, gw: Gateway) -> web.StreamResponse:
    return web.json_response([_agent(gw, r) for r in gw.fleet.all()])


async def get_agent(request: web.Request, gw: Gateway) -> web.StreamResponse:
    return web.json_response(_agent(gw, gw.fleet.get(request.match_info["agent_id"])))


async def report_status(request: web.Request, gw: Gateway) -> web.StreamResponse:
    agent_id = request.match_info["agent_id"]
    principal = request[PRINCIPAL]
    if principal.agent_id is None:
        raise PermissionDenied(
            "only an enrolled agent's own token may report its status "
            "(cloud-gateway fleet enrol AGENT_ID --site SITE)"
        )
    if principal.agent_id != agent_id:
        raise PermissionDenied(
            f"this token belongs to agent {principal.agent_id!r}; "
            f"it may not report for {agent_id!r}"
        )
    report = await _body(request, StatusReport)
    if report.agent_id != agent_id:
        raise InvalidInput("agent_id in the body differs from the path")
    gw.fleet.apply(report, gw.fleet.identity(agent_id))
    return web.json_response(_agent(gw, gw.fleet.get(report.agent_id)))


async def set_labels(request: web.Request, gw: Gateway) -> web.StreamResponse:
    body = await _body(request, LabelsRequest)
    return web.json_response(
        _agent(gw, gw.fleet.set_labels(request.match_info["agent_id"], body.labels))
    )


async def assign_model(request: web.Request, gw: Gateway) -> web.StreamResponse:
    body = await _body(request, AssignRequest)
    name = validate_name(request.match_info["name"])
    agent_id = request.match_info["agent_id"]
    desired = gw.engine.assign(agent_id, name, body.version, body.topics)
    return web.json_response({"agent_id": agent_id, "desired": desired})


async def unassign_model(request: web.Request, gw: Gateway) -> web.StreamResponse:
    name = validate_name(request.match_info["name"])
    agent_id = request.match_info["agent_id"]
    desired = gw.engine.unassign(agent_id, name)
    return web.json_response({"agent_id": agent_id, "desired": desired})


async def list_rollouts(request: web.Request, gw: Gateway) -> web.StreamResponse:
    return web.json_response(gw.engine.list(request.query.get("model")))


async def start_rollout(request: web.Request, gw: Gateway) -> web.StreamResponse:
    rollout = gw.engine.start(await _body(request, RolloutRequest))
    gw.kick()
    return web.json_response(rollout, status=201)


async def get_rollout(request: web.Request, gw: Gateway) -> web.StreamResponse:
    return web.json_response(gw.engine.get(request.match_info["rollout_id"]))


async def start_config_rollout(request: web.Request, gw: Gateway) -> web.StreamResponse:
    rollout = gw.engine.start_config(await _body(request, ConfigRolloutRequest))
    gw.kick()
    return web.json_response(rollout, status=201)


async def rollback_rollout(request: web.Request, gw: Gateway) -> web.StreamResponse:
    row = gw.engine.get(request.match_info["rollout_id"], detail=False)
    return web.json_response(gw.engine.rollback(row["model"], row["id"]))


async def rollback_model(request: web.Request, gw: Gateway) -> web.StreamResponse:
    body = await _body(request, RollbackRequest)
    return web.json_response(gw.engine.rollback(body.model, body.rollout_id))


async def metrics(request: web.Request, gw: Gateway) -> web.StreamResponse:
    body = generate_latest(gw.metrics.registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
