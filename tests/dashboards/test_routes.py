"""The dashboards' aiohttp routes: only shipped assets, same-origin CSP, no stray files."""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest
from aiohttp import test_utils, web

from cloud_gateway.dashboard import add_routes as add_fleet_routes
from edge_agent.ops.dashboard import add_routes as add_edge_routes

Adder = Callable[[web.Application], None]
PAGES = [(add_edge_routes, "/"), (add_fleet_routes, "/dashboard"), (add_fleet_routes, "/")]


async def _client(add: Adder, app: web.Application | None = None) -> test_utils.TestClient:
    app = app or web.Application()
    add(app)
    client = test_utils.TestClient(test_utils.TestServer(app, host="127.0.0.1"))
    await client.start_server()
    return client


@pytest.mark.parametrize(("add", "path"), PAGES)
async def test_page_and_every_asset_it_references_are_served(add: Adder, path: str) -> None:
    client = await _client(add)
    try:
        resp = await client.get(path)
        assert resp.status == 200
        assert resp.content_type == "text/html"
        csp = resp.headers["Content-Security-Policy"]
        assert "default-src 'none'" in csp and "connect-src 'self'" in csp
        html = await resp.text()
        refs = re.findall(r'(?:src|href)="(dashboard/[^"]+)"', html)
        assert refs, "the page references its assets"
        for ref in refs:
            asset = await client.get("/" + ref)
            assert asset.status == 200, ref
            body = await asset.text()
            # ES module imports must resolve to shipped assets too.
            for imported in re.findall(r'from "\./([^"]+)"', body):
                sub = await client.get("/dashboard/" + imported)
                assert sub.status == 200, imported
            assert "http://" not in body and "https://" not in body, ref
    finally:
        await client.close()


@pytest.mark.parametrize("add", [add_edge_routes, add_fleet_routes])
@pytest.mark.parametrize("name", ["__init__.py", "..%2F__init__.py", "nope.js", "index.html.bak"])
async def test_nothing_but_the_assets_is_served(add: Adder, name: str) -> None:
    client = await _client(add)
    try:
        resp = await client.get("/dashboard/" + name)
        assert resp.status == 404
    finally:
        await client.close()


async def test_fleet_page_leaves_an_existing_root_route_alone() -> None:
    app = web.Application()

    async def root(_: web.Request) -> web.Response:
        return web.Response(text="gateway root")

    app.router.add_get("/", root)
    client = await _client(add_fleet_routes, app)
    try:
        assert await (await client.get("/")).text() == "gateway root"
        assert (await client.get("/dashboard")).status == 200
    finally:
        await client.close()


async def test_both_pages_serve_the_one_shared_dom_helpers() -> None:
    """dom.js lives once, in shell/web, and both apps serve it (the gateway must not
    import edge_agent, so the shared asset sits in a package both may import)."""
    from shell.web import shared_asset

    want = shared_asset("dom.js")
    for add in (add_edge_routes, add_fleet_routes):
        app = web.Application()
        add(app)
        client = test_utils.TestClient(test_utils.TestServer(app))
        await client.start_server()
        try:
            resp = await client.get("/dashboard/dom.js")
            assert resp.status == 200 and await resp.read() == want
        finally:
            await client.close()
