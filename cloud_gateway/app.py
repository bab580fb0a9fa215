"""The aiohttp application: routes from the table, role checks, one error middleware."""

from __future__ import annotations

import functools
import logging
from typing import TYPE_CHECKING

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from cloud_gateway.auth import PRINCIPAL, Role, require
from cloud_gateway.dashboard import add_routes as add_dashboard_routes
from cloud_gateway.routes import ROUTES, Handler, Route
from models.errors import (
    HTTP_STATUS,
    BundleTooLarge,
    EdgecloudError,
    PermissionDenied,
    Status,
    UnservableModel,
)

if TYPE_CHECKING:
    from cloud_gateway.service import Gateway

log = logging.getLogger(__name__)

_HTTP_REASONS = {
    404: ("not-found", Status.NOT_FOUND),
    405: ("method-not-allowed", Status.INVALID_ARGUMENT),
}


#: Where HTTP has a more precise code than the status table.
_OVERRIDES: dict[type[EdgecloudError], int] = {BundleTooLarge: 413, UnservableModel: 422}


def _error_response(exc: EdgecloudError) -> web.Response:
    status = next((c for t, c in _OVERRIDES.items() if isinstance(exc, t)), None)
    status = status or HTTP_STATUS[exc.status]
    headers = {"WWW-Authenticate": 'Bearer realm="edgecloud"'} if status == 401 else None
    return web.json_response(exc.to_dict(), status=status, headers=headers)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except EdgecloudError as exc:
        if HTTP_STATUS[exc.status] >= 500:
            log.error("%s %s: %s", request.method, request.path, exc.message)
        return _error_response(exc)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        reason, kind = _HTTP_REASONS.get(exc.status, ("http-error", Status.INVALID_ARGUMENT))
        body = {"error": reason, "status": kind.value, "message": exc.reason or str(exc)}
        return web.json_response(body, status=exc.status)
    except Exception:
        log.exception("%s %s failed", request.method, request.path)
        body = {"error": "internal", "status": "INTERNAL", "message": "internal server error"}
        return web.json_response(body, status=500)


class _RedactBadRequests(logging.Filter):
    """aiohttp logs a malformed request with the exception, whose message quotes the
    start of the offending line: for an oversized ``Authorization`` header that is the
    start of a bearer token. Keep the event, drop the bytes (and the traceback)."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            what = record.getMessage()
            record.msg = "%s; rejected %s (HTTP %s), request bytes not logged"
            record.args = (what, type(exc).__name__, exc.code)
            record.exc_info = None
            record.exc_text = None
        return True


def redact_bad_request_logs() -> None:
    """Install :class:`_RedactBadRequests` on aiohttp's server logger (once)."""
    server_log = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, _RedactBadRequests) for f in server_log.filters):
        server_log.addFilter(_RedactBadRequests())


def _bind(route: Route, gw: Gateway) -> Handler:
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
