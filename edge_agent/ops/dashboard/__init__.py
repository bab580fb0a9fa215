"""The live edge dashboard: a static page served by the agent's aiohttp app.

The page reads ``/api/status`` once and then follows ``/api/events`` (SSE); both are
served by the agent's HTTP module. This module only names the page's own assets; they
are served with the shared ones by :func:`shell.web.serve_dashboard` (nothing is fetched
from the network at run time, and the Content-Security-Policy header makes the browser
enforce that).
"""

from __future__ import annotations

from aiohttp import web

from shell.web import CSP, serve_dashboard

ASSETS: dict[str, str] = {
    "app.js": "text/javascript",
    "chart.js": "text/javascript",
    "style.css": "text/css",
}

__all__ = ["ASSETS", "CSP", "add_routes"]


def add_routes(app: web.Application, *, index_path: str = "/") -> None:
    """Register the dashboard page at ``index_path`` and its assets under /dashboard/."""
    serve_dashboard(app, __package__ or __name__, ASSETS, [index_path])
