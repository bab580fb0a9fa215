"""The fleet dashboard: a static page served by the gateway's aiohttp app.

The page polls the gateway's REST API (``/api/v1/...``) with a bearer token the operator
types in; admin actions are plain REST calls, so the API's role checks apply unchanged.
This module only names the page's own assets; they are served with the shared ones by
:func:`shell.web.serve_dashboard` (nothing is fetched from the network at run time; the
Content-Security-Policy header makes the browser enforce that).
"""

from __future__ import annotations

from aiohttp import web

from shell.web import CSP, serve_dashboard

ASSETS: dict[str, str] = {
    "app.js": "text/javascript",
    "gates.js": "text/javascript",
    "style.css": "text/css",
}

__all__ = ["ASSETS", "CSP", "add_routes"]


def add_routes(app: web.Application) -> None:
    """Register the page at ``/dashboard`` (and ``/`` unless taken) and its assets."""
    paths = ["/dashboard"]
    if not any(r.canonical == "/" for r in app.router.resources()):
        paths.append("/")
    serve_dashboard(app, __package__ or __name__, ASSETS, paths)
