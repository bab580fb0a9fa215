"""The aiohttp application: routes from the table, role checks, one error middleware."""

from __future__ import annotations

import functools
import logging
from typing import TYPE_CHECKING

from aiohttp import web

from cloud_gateway.auth import PRINCIPAL, Role, require
from cloud_gateway.dashboard import add_routes as add_dashboard_routes
from cloud_gateway.routes import ROUTES, Route
from models.errors import BundleTooLarge, EdgecloudError, PermissionDenied, UnservableModel
from shell.http import Handler as RequestHandler
from shell.http import json_errors, redact_bad_request_logs

if TYPE_CHECKING:
    from cloud_gateway.context import Gateway

log = logging.getLogger(__name__)

#: Where HTTP has a more precise code than the status table.
_OVERRIDES: dict[type[EdgecloudError], int] = {BundleTooLarge: 413, UnservableModel: 422}

error_middleware = json_errors(_OVERRIDES, challenge='Bearer realm="edgecloud"')


def _bind(route: Route, gw: Gateway) -> RequestHandler:
    @functools.wraps(route.handler)
    async def handler(request: web.Request) -> web.StreamResponse:
        if route.role is not None:
            principal = gw.tokens.authenticate(
                request.headers.get("Authorization"), gw.fleet.enrolments.by_token_digest
            )
            require(principal, route.role)
            if principal.agent_id is not None and route.role != Role.AGENT:
                # An agent's own token: report for itself, download bundles; nothing else.
                raise PermissionDenied(
                    "an enrolled agent's token may only report its own status and download bundles"
                )
            request[PRINCIPAL] = principal
        return await route.handler(request, gw)

    return handler


def make_app(gw: Gateway) -> web.Application:
    redact_bad_request_logs()
    # Metrics outermost: they count the status the error middleware chose.
    app = web.Application(
        middlewares=[gw.metrics.middleware, error_middleware], client_max_size=1 << 20
    )
    for route in ROUTES:
        app.router.add_route(route.method, route.path, _bind(route, gw))
    add_dashboard_routes(app)  # the fleet page at /dashboard (and /): static, no token needed
    return app
