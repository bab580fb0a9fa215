"""aiohttp routes: /metrics, /healthz, /readyz, /api/status, /api/events (SSE), / (dashboard).

Routes only convert and call the agent; errors are translated once by the middleware.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from typing import TYPE_CHECKING, Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from edge_agent.ops.dashboard import add_routes as add_dashboard_routes
from shell.http import json_errors, redact_bad_request_logs

if TYPE_CHECKING:
    from edge_agent.app.agent import EdgeAgent

AGENT_KEY: web.AppKey[Any] = web.AppKey("agent", object)


async def _metrics(request: web.Request) -> web.Response:
    agent: EdgeAgent = request.app[AGENT_KEY]
    body = generate_latest(agent.metrics.registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def _healthz(request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


async def _readyz(request: web.Request) -> web.Response:
    agent: EdgeAgent = request.app[AGENT_KEY]
    body = {
        "ready": agent.ready,
        "model_loaded": all(p.models.loaded is not None for p in agent.pipelines.values()),
        "models": {name: p.ready for name, p in agent.pipelines.items()},
        "broker_connected": agent.broker_connected,
    }
    return web.json_response(body, status=200 if agent.ready else 503)


async def _status(request: web.Request) -> web.Response:
    return web.json_response(request.app[AGENT_KEY].status())


async def _events(request: web.Request) -> web.StreamResponse:
    """SSE: the first message is the status document plus ``history`` (the last 10 min of
    the chart series, :mod:`edge_agent.ops.history`), then one status document per sample.

    History rides inside the first ``data:`` message rather than as a named event so
    plain SSE readers that take the first ``data:`` line as a status document still work.
    """
    agent: EdgeAgent = request.app[AGENT_KEY]
    history = agent.history
    resp = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
    )
    await resp.prepare(request)
    try:
        first = agent.status() | {"ts": round(time.time(), 3), "history": history.series()}
        await resp.write(f"data: {json.dumps(first)}\n\n".encode())
        while True:
            if await history.next(within_s=2.0 * history.period_s) and history.latest:
                body = history.latest  # encoded once per sample, shared by every page
            else:  # the sampler is not running (an agent that never started): ask directly
                body = json.dumps(agent.status() | {"ts": round(time.time(), 3)}).encode()
            await resp.write(b"data: " + body + b"\n\n")
    except (ConnectionResetError, asyncio.CancelledError):
        pass
    return resp


def dashboard_url(agent: EdgeAgent) -> str | None:
    """Where this agent's dashboard answers, for the heartbeat (the fleet page links it).

    The bound host when it is a concrete address; for a wildcard bind (0.0.0.0, ::) the
    host name, which is what other machines on the node's network resolve. None before
    the HTTP server is up.
    """
    if agent.http_port is None:
        return None
    host = agent.settings.http_host
    if host in ("", "0.0.0.0", "::"):
        host = socket.gethostname()
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{agent.http_port}/"


def make_app(agent: EdgeAgent) -> web.Application:
    redact_bad_request_logs()
    app = web.Application(middlewares=[json_errors()])
    app[AGENT_KEY] = agent
    app.router.add_get("/metrics", _metrics)
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    app.router.add_get("/api/status", _status)
    app.router.add_get("/api/events", _events)
    add_dashboard_routes(app)  # the live page at / and its assets under /dashboard/
    return app


async def start_http(agent: EdgeAgent, host: str, port: int) -> tuple[web.AppRunner, int]:
    """Serve the app; returns the runner and the bound port (``port=0`` picks one)."""
    runner = web.AppRunner(make_app(agent), access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound = runner.addresses[0][1] if runner.addresses else port
    return runner, int(bound)
