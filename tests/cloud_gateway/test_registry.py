"""Registry over real HTTP: verified uploads, specific refusals, list/get/download/delete."""

from __future__ import annotations

import hashlib

import aiohttp
import pytest

from cloud_gateway.service import Gateway
from tests.cloud_gateway.bundles import BAD_REASONS, BundleSet
from tests.cloud_gateway.conftest import auth, push


async def test_upload_list_get_download(
    gateway: Gateway, http: aiohttp.ClientSession, bundle_set: BundleSet
) -> None:
    first = await push(http, gateway, bundle_set.good[1])
    assert (first["name"], first["version"]) == ("motion-edge", 1)
    assert first["sha256"] == hashlib.sha256(bundle_set.good[1].read_bytes()).hexdigest()
    assert first["manifest"]["name"] == "motion-edge"
    await push(http, gateway, bundle_set.good[2])

    async with http.get(f"{gateway.url}/api/v1/models", headers=auth("viewer")) as resp:
        assert await resp.json() == [{"name": "motion-edge", "versions": [1, 2], "latest": 2}]
    async with http.get(
        f"{gateway.url}/api/v1/models/motion-edge/versions", headers=auth("viewer")
    ) as resp:
        assert [v["version"] for v in await resp.json()] == [1, 2]
    async with http.get(first["url"], headers=auth("agent")) as resp:
        assert resp.status == 200
        assert await resp.read() == bundle_set.good[1].read_bytes()
        assert resp.headers["X-Bundle-Sha256"] == first["sha256"]
    async with http.get(first["url"], headers=auth("viewer")) as resp:
        assert resp.status == 403


async def test_reupload_same_is_noop_and_different_conflicts(
    gateway: Gateway, http: aiohttp.ClientSession, bundle_set: BundleSet, tmp_path
) -> None:
    await push(http, gateway, bundle_set.good[1])
    async with http.post(
        f"{gateway.url}/api/v1/models", data=bundle_set.good[1].read_bytes(), headers=auth("admin")
    ) as resp:
        assert resp.status == 200
    # Same name and version, different (validly signed) bytes: refused.
    from models.recipes.build import build_model

    other = build_model("motion-edge", 1, tmp_path / "other", bundle_set.key, seed=77)
    async with http.post(
        f"{gateway.url}/api/v1/models", data=other.read_bytes(), headers=auth("admin")
    ) as resp:
        body = await resp.json()
        assert resp.status == 409, body
        assert body["error"] == "version-exists"


@pytest.mark.parametrize("kind", sorted(BAD_REASONS))
async def test_bad_push_refused_with_specific_error(
    gateway: Gateway, http: aiohttp.ClientSession, bundle_set: BundleSet, kind: str
) -> None:
    async with http.post(
        f"{gateway.url}/api/v1/models",
        data=bundle_set.bad[kind].read_bytes(),
        headers=auth("admin"),
    ) as resp:
        body = await resp.json()
    assert resp.status == 400, body
    assert body["error"] == BAD_REASONS[kind], body
    assert body["status"] == "INVALID_ARGUMENT" and body["message"]
    assert gateway.registry.models() == {}
    incoming = gateway.settings.blob_dir / "incoming"
    assert not [p for p in incoming.rglob("*") if p.is_file()]


async def test_size_limit_and_empty_upload(
    gateway_settings, http: aiohttp.ClientSession, bundle_set: BundleSet
) -> None:
    from cloud_gateway.service import serve

    async with serve(gateway_settings(max_bundle_bytes=1000)) as gw:
        async with http.post(
            f"{gw.url}/api/v1/models", data=bundle_set.good[1].read_bytes(), headers=auth("admin")
        ) as resp:
            body = await resp.json()
            assert resp.status == 413 and body["error"] == "bundle-too-large", body
        async with http.post(f"{gw.url}/api/v1/models", data=b"", headers=auth("admin")) as resp:
            assert resp.status == 400
            assert "empty upload" in (await resp.json())["message"]


async def test_delete_only_unused_versions(
    gateway: Gateway, http: aiohttp.ClientSession, bundle_set: BundleSet
) -> None:
    await push(http, gateway, bundle_set.good[1], bundle_set.good[2])
    gateway.db.table("desired").insert(
        {
            "agent_id": "a1",
            "model": "motion-edge",
            "version": 2,
            "sha256": "x",
            "url": "u",
            "rollout_id": None,
            "issued_at": 0.0,
        }
    )
    url = f"{gateway.url}/api/v1/models/motion-edge/versions"
    async with http.delete(f"{url}/2", headers=auth("admin")) as resp:
        body = await resp.json()
        assert resp.status == 409 and body["error"] == "version-in-use", body
        assert "a1" in body["message"]
    async with http.delete(f"{url}/1", headers=auth("admin")) as resp:
        assert resp.status == 200
    async with http.get(f"{url}/1", headers=auth("viewer")) as resp:
        assert resp.status == 404 and (await resp.json())["error"] == "not-found"
    assert gateway.registry.models() == {"motion-edge": [2]}
    blobs = [p for p in gateway.settings.blob_dir.rglob("*.bundle") if "incoming" not in p.parts]
    assert len(blobs) == 1
