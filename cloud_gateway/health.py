"""``/readyz``: whether this gateway should receive traffic (Kubernetes readiness).

``/healthz`` (liveness) only says the process serves HTTP; ready means the three things
every API call and rollout depends on are up: the database answers, the MQTT broker is
connected (desired state goes out and heartbeats come in over it) and the rollout engine
task is alive. Same body shape as the edge agent's ``/readyz``, plus whether this replica
leads the rollout engine (cloud_gateway.leader) and the database dialect.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from cloud_gateway.db import DatabaseError

if TYPE_CHECKING:
    from cloud_gateway.context import Gateway


def _db_open(gw: Gateway) -> bool:
    try:
        gw.db.execute("select 1").fetchall()
    except DatabaseError:  # closed or broken connection
        return False
    return True


async def readyz(request: web.Request, gw: Gateway) -> web.StreamResponse:
    task = gw.engine_task
    checks = {
        "db_open": _db_open(gw),
        "broker_connected": bool(gw.bus is not None and gw.bus.connected),
        "engine_running": task is not None and not task.done(),
    }
    ready = all(checks.values())
    # Leadership is reported, not required: every replica serves the API and heartbeats.
    extra = {"leader": gw.leadership.leading, "database": gw.db.dialect}
    return web.json_response({"ready": ready, **checks, **extra}, status=200 if ready else 503)
