"""The HTTP side every aiohttp app shares: the status table, one JSON error middleware,
and bad-request logs without request bytes.

Errors are raised as :class:`~models.errors.EdgecloudError` subclasses anywhere below a
route and translated here, once: the status table maps the transport-neutral status to an
HTTP code (an app may name more precise codes for some classes), and the body is
``{"error", "status", "message"}``. An app whose protocol fixes another body (KServe V2's
``{"error": "..."}``) passes its own ``body``.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from models.errors import EdgecloudError, Status

log = logging.getLogger(__name__)

HTTP_STATUS: dict[Status, int] = {
    Status.INVALID_ARGUMENT: 400,
    Status.NOT_FOUND: 404,
    Status.ALREADY_EXISTS: 409,
    Status.FAILED_PRECONDITION: 409,
    Status.UNAUTHENTICATED: 401,
    Status.PERMISSION_DENIED: 403,
    Status.RESOURCE_EXHAUSTED: 429,
    Status.DEADLINE_EXCEEDED: 504,
    Status.UNAVAILABLE: 503,
    Status.INTERNAL: 500,
}

_HTTP_REASONS = {
    404: ("not-found", Status.NOT_FOUND),
    405: ("method-not-allowed", Status.INVALID_ARGUMENT),
}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Body = Callable[[str, Status, str], dict[str, Any]]


def _default_body(error: str, status: Status, message: str) -> dict[str, Any]:
    return {"error": error, "status": status.value, "message": message}


def http_status(exc: EdgecloudError, overrides: Mapping[type[EdgecloudError], int]) -> int:
    """The HTTP code of ``exc``: the most precise override, else the status table."""
    found = next((c for t, c in overrides.items() if isinstance(exc, t)), None)
    return found or HTTP_STATUS[exc.status]


def json_errors(
    overrides: Mapping[type[EdgecloudError], int] | None = None,
    *,
    body: Body = _default_body,
    challenge: str | None = None,
) -> Any:
    """An aiohttp middleware answering every error as JSON (see the module doc).

    ``challenge`` is the ``WWW-Authenticate`` value sent with a 401. Unexpected
    exceptions are logged with their traceback and answered 500 without details.
    """
    codes = dict(overrides or {})

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except EdgecloudError as exc:
            status = http_status(exc, codes)
            if status >= 500:
                log.error("%s %s: %s", request.method, request.path, exc.message)
            headers = {"WWW-Authenticate": challenge} if status == 401 and challenge else None
            return web.json_response(
                body(exc.reason, exc.status, exc.message), status=status, headers=headers
            )
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            reason, kind = _HTTP_REASONS.get(exc.status, ("http-error", Status.INVALID_ARGUMENT))
            return web.json_response(body(reason, kind, exc.reason or str(exc)), status=exc.status)
        except Exception:
            log.exception("%s %s failed", request.method, request.path)
            return web.json_response(
                body("internal", Status.INTERNAL, "internal server error"), status=500
            )

    return middleware


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
