"""aiohttp routes: /metrics, /healthz, /readyz, /api/status, /api/events (SSE), / (dashboard).

Routes only convert and call the agent; errors are translated once by the middleware.
"""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING, Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from edge_agent.dashboard import add_routes as add_dashboard_routes
from shell.http import json_errors, redact_bad_request_logs

if TYPE_CHECKING:
    from edge_agent.agent import EdgeAgent

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
    agent: EdgeAgent = request.app[AGENT_KEY]
    resp = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
    )
    await resp.prepare(request)
    try:
        while True:
            await resp.write(f"data: {json.dumps(agent.status())}\n\n".encode())
            await asyncio.sleep(1.0)
    except (ConnectionResetError, asyncio.CancelledError):
        pass
    return resp


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
