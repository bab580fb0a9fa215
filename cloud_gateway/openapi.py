"""The OpenAPI 3.1 document, generated from the route table (never written by hand)."""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from cloud_gateway.routes import BINARY, ROUTES, Route
from cloud_gateway.schemas import ErrorBody

_REF = "#/components/schemas/{model}"
_PARAM = re.compile(r"{(\w+)}")


def _models(routes: tuple[Route, ...]) -> list[type[BaseModel]]:
    seen: dict[str, type[BaseModel]] = {"ErrorBody": ErrorBody}
    for r in routes:
        for m in (r.request, r.response):
            if isinstance(m, type) and issubclass(m, BaseModel):
                seen[m.__name__] = m
    return list(seen.values())


def _content(model: type[BaseModel] | str | None, many: bool = False) -> dict[str, Any]:
    if model == BINARY:
        return {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}
    if isinstance(model, type):
        ref: dict[str, Any] = {"$ref": _REF.format(model=model.__name__)}
        return {"application/json": {"schema": {"type": "array", "items": ref} if many else ref}}
    return {"application/json": {"schema": {"type": "object"}}}


def _error(description: str) -> dict[str, Any]:
    return {"description": description, "content": _content(ErrorBody)}


def build_openapi(version: str = "0.1.0", routes: tuple[Route, ...] = ROUTES) -> dict[str, Any]:
    models = _models(routes)
    _, defs = models_json_schema([(m, "validation") for m in models], ref_template=_REF)
    paths: dict[str, dict[str, Any]] = {}
    for r in routes:
        op: dict[str, Any] = {
            "operationId": r.operation_id,
            "summary": r.summary,
            "tags": [r.tag],
            "responses": {
                str(r.status): {"description": "OK", "content": _content(r.response, r.many)}
            },
        }
        params = [
            {
                "name": p,
                "in": "path",
                "required": True,
                "schema": {"type": "integer"} if p == "version" else {"type": "string"},
            }
            for p in _PARAM.findall(r.path)
        ]
        if params:
            op["parameters"] = params
        if r.request is not None:
            op["requestBody"] = {"required": True, "content": _content(r.request)}
        if r.role is not None:
            op["security"] = [{"bearerAuth": []}]
            op["x-required-role"] = r.role.label
            op["responses"]["401"] = _error("missing or unknown bearer token")
            op["responses"]["403"] = _error(f"needs the {r.role.label} role")
        else:
            op["security"] = []
        if r.request is not None or "{" in r.path:
            op["responses"]["400"] = _error("invalid request")
        paths.setdefault(r.path, {})[r.method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "edgecloud cloud gateway",
            "version": version,
            "description": "Model registry, fleet state and staged rollouts. Roles are ordered "
            "admin > agent > viewer; `x-required-role` names the least role an operation needs.",
        },
        "paths": paths,
        "components": {
            "schemas": defs.get("$defs", {}),
            "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer"}},
        },
    }
