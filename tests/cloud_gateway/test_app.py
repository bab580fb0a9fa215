"""Auth enforcement enumerated from /openapi.json, and the JSON error contract."""

from __future__ import annotations

import re

import aiohttp

from cloud_gateway.auth import Role
from cloud_gateway.routes import ROUTES
from cloud_gateway.service import Gateway
from tests.cloud_gateway.conftest import TOKENS, auth

ROLES = ["viewer", "agent", "admin"]


def _concrete(path: str) -> str:
    return re.sub(r"{version}", "1", re.sub(r"{(\w+)}", "x", path))


async def test_openapi_document_matches_route_table(
    gateway: Gateway, http: aiohttp.ClientSession
) -> None:
    async with http.get(f"{gateway.url}/openapi.json") as resp:
        doc = await resp.json()
    assert doc["openapi"].startswith("3.")
    ops = {(m.upper(), p) for p, item in doc["paths"].items() for m in item}
    assert ops == {(r.method, r.path) for r in ROUTES}
    upload = doc["paths"]["/api/v1/models"]["post"]
    assert upload["x-required-role"] == "admin"
    assert "application/octet-stream" in upload["requestBody"]["content"]
    start = doc["paths"]["/api/v1/rollouts"]["post"]["requestBody"]["content"]
    ref = start["application/json"]["schema"]["$ref"].rsplit("/", 1)[-1]
    assert "waves" in doc["components"]["schemas"][ref]["properties"]


async def test_every_mutating_route_needs_a_big_enough_token(
    gateway: Gateway, http: aiohttp.ClientSession
) -> None:
    async with http.get(f"{gateway.url}/openapi.json") as resp:
        doc = await resp.json()
    checked = 0
    # Heartbeats need the agent's own enrolled token; a shared agent token is refused.
    own = {"Authorization": f"Bearer {gateway.fleet.enrolments.enrol('x', 's')}"}
    for path, item in doc["paths"].items():
        for method, op in item.items():
            if method.upper() not in ("POST", "PUT", "PATCH", "DELETE"):
                continue
            need = op.get("x-required-role")
            assert need is not None, f"{method} {path} is mutating but public"
            url = f"{gateway.url}{_concrete(path)}"
            async with http.request(method, url, json={}) as resp:
                body = await resp.json()
                assert resp.status == 401, (method, path, body)
                assert body["error"] == "unauthenticated"
                assert resp.headers["WWW-Authenticate"].startswith("Bearer")
            async with http.request(
                method, url, json={}, headers={"Authorization": "Bearer not-a-token"}
            ) as resp:
                assert resp.status == 401, (method, path)
            for role in ROLES[: ROLES.index(need)]:
                async with http.request(method, url, json={}, headers=auth(role)) as resp:
                    body = await resp.json()
                    assert resp.status == 403, (method, path, role, body)
                    assert body["error"] == "permission-denied"
            # The required role gets past auth (whatever the handler then says).
            headers = own if path.endswith("/status") else auth(need)
            async with http.request(method, url, json={}, headers=headers) as resp:
                assert resp.status not in (401, 403), (method, path, need)
            checked += 1
    assert checked == sum(r.mutating for r in ROUTES) >= 7


async def test_read_routes_need_at_least_viewer(
    gateway: Gateway, http: aiohttp.ClientSession
) -> None:
    for route in ROUTES:
        if route.method != "GET" or route.role is None:
            continue
        url = f"{gateway.url}{_concrete(route.path)}"
        async with http.get(url) as resp:
            assert resp.status == 401, route.path
        if route.role > Role.VIEWER:
            async with http.get(url, headers=auth("viewer")) as resp:
                assert resp.status == 403, route.path


async def test_errors_are_json(gateway: Gateway, http: aiohttp.ClientSession) -> None:
    async with http.get(f"{gateway.url}/api/v1/nope", headers=auth("admin")) as resp:
        assert resp.status == 404
        assert (await resp.json())["error"] == "not-found"
    async with http.post(
        f"{gateway.url}/api/v1/rollouts", data=b"{not json", headers=auth("admin")
    ) as resp:
        body = await resp.json()
        assert resp.status == 400 and body["error"] == "invalid-input"
    async with http.post(
        f"{gateway.url}/api/v1/rollouts",
        json={"model": "../etc", "version": 1},
        headers=auth("admin"),
    ) as resp:
        body = await resp.json()
        assert resp.status == 400 and "model" in body["message"]
    async with http.get(
        f"{gateway.url}/api/v1/models/motion-edge/versions/abc", headers=auth("viewer")
    ) as resp:
        assert resp.status == 400
    assert TOKENS["admin"] not in str(gateway.tokens.__dict__)


async def test_fleet_dashboard_is_served_next_to_the_api(
    gateway: Gateway, http: aiohttp.ClientSession
) -> None:
    for path in ("/", "/dashboard"):
        async with http.get(f"{gateway.url}{path}") as resp:
            assert resp.status == 200 and resp.content_type == "text/html"
            assert "default-src 'none'" in resp.headers["Content-Security-Policy"]
