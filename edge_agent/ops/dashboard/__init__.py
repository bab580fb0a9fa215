"""The live edge dashboard: a static page served by the agent's aiohttp app.

The page reads ``/api/status`` once and then follows ``/api/events`` (SSE); both are
served by the agent's HTTP module. This module only serves the page and its assets,
all shipped in the package (nothing is fetched from the network at run time, and the
Content-Security-Policy header makes the browser enforce that).
"""

from __future__ import annotations

from importlib import resources

from aiohttp import web

from shell.web import SHARED, shared_asset

ASSETS: dict[str, str] = {
    "app.js": "text/javascript",
    "chart.js": "text/javascript",
    "dom.js": "text/javascript",
    "style.css": "text/css",
}
STATIC_PREFIX = "/dashboard"
# Same-origin only: a page that tried to load anything from elsewhere would be
# blocked by the browser and show up as a console error in the tests.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
_HEADERS = {
    "Content-Security-Policy": CSP,
    "Cache-Control": "no-cache",
    "X-Content-Type-Options": "nosniff",
}


def _load(name: str) -> bytes:
    if name in SHARED:  # one copy for both dashboards (shell/web)
        return shared_asset(name)
    return resources.files(__package__).joinpath(name).read_bytes()


def add_routes(app: web.Application, *, index_path: str = "/") -> None:
    """Register the dashboard page at ``index_path`` and its assets under /dashboard/.

    Assets are read once here (not at import time) and served from memory: a page
    left open reloads nothing, so the cost to the agent is the SSE stream alone.
    """
    index = _load("index.html")
    assets = {name: _load(name) for name in ASSETS}

    async def page(_: web.Request) -> web.Response:
        return web.Response(body=index, content_type="text/html", charset="utf-8", headers=_HEADERS)

    async def static(request: web.Request) -> web.Response:
        name = request.match_info["file"]
        body = assets.get(name)
        if body is None:
            raise web.HTTPNotFound(text=f"no dashboard asset {name!r}")
        return web.Response(body=body, content_type=ASSETS[name], charset="utf-8", headers=_HEADERS)

    app.router.add_get(index_path, page, name="dashboard")
    app.router.add_get(STATIC_PREFIX + "/{file}", static, name="dashboard-static")
