"""The dashboards' serving side, shared by the edge agent's page and the gateway's fleet
page: assets shipped in a package and served from memory under ``/dashboard/`` with a
strict Content-Security-Policy, and the assets both pages use (``dom.js``, the DOM
helpers; ``base.css``, the common look), which live here once, in a package both may
import (the gateway must not import the edge agent).
"""

from __future__ import annotations

from importlib import resources

from aiohttp import web

#: Shared asset -> content type.
SHARED: dict[str, str] = {"dom.js": "text/javascript", "base.css": "text/css"}
STATIC_PREFIX = "/dashboard"
# Same-origin only: a page that tried to load anything from elsewhere would be
# blocked by the browser and show up as a console error in the tests.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
HEADERS = {
    "Content-Security-Policy": CSP,
    "Cache-Control": "no-cache",
    "X-Content-Type-Options": "nosniff",
}


def shared_asset(name: str) -> bytes:
    """The bytes of one shared asset (read when an app starts, not at import time)."""
    return resources.files(__package__).joinpath(name).read_bytes()


def serve_dashboard(
    app: web.Application, package: str, assets: dict[str, str], index_paths: list[str]
) -> None:
    """Serve ``package``'s ``index.html`` at each of ``index_paths`` and its ``assets``
    (name -> content type; plus the shared ones) under ``/dashboard/``.

    Assets are read once here (not at import time) and served from memory: a page left
    open reloads nothing, so a page costs its data requests alone.
    """
    types = {**SHARED, **assets}

    def load(name: str) -> bytes:
        if name in SHARED:
            return shared_asset(name)
        return resources.files(package).joinpath(name).read_bytes()

    index = load("index.html")
    bodies = {name: load(name) for name in types}

    async def page(_: web.Request) -> web.Response:
        return web.Response(body=index, content_type="text/html", charset="utf-8", headers=HEADERS)

    async def static(request: web.Request) -> web.Response:
        name = request.match_info["file"]
        body = bodies.get(name)
        if body is None:
            raise web.HTTPNotFound(text=f"no dashboard asset {name!r}")
        return web.Response(body=body, content_type=types[name], charset="utf-8", headers=HEADERS)

    for i, path in enumerate(index_paths):
        app.router.add_get(path, page, name="dashboard" if i == 0 else f"dashboard-index{i}")
    app.router.add_get(STATIC_PREFIX + "/{file}", static, name="dashboard-static")
