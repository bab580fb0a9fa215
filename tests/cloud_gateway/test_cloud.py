"""Rollouts also load the version into the cloud tier: a real offload-server over gRPC."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp

from cloud_gateway.service import serve
from offload.server import serve as serve_offload
from offload.settings import OffloadSettings
from tests.cloud_gateway.bundles import MODEL, BundleSet
from tests.cloud_gateway.conftest import auth, push
from tests.cloud_gateway.mqttutil import Peer, until
from tests.conftest import free_port


def _heartbeat(agent: str) -> dict[str, Any]:
    return {
        "agent_id": agent,
        "site": "s",
        "online": True,
        "models": {MODEL: {"version": 1, "state": "serving"}},
        "metrics": {},
    }


async def _roll_out_v2(http: aiohttp.ClientSession, gw: Any, peer: Peer, agent: str) -> str:
    """A heartbeat makes ``agent`` known; then v2 is rolled out to it at once."""
    peer.publish(gw.topics.status(agent), _heartbeat(agent))
    await until(lambda: gw.fleet.find(agent), what="agent")
    async with http.post(
        f"{gw.url}/api/v1/rollouts",
        json={"model": MODEL, "version": 2, "strategy": "all-at-once"},
        headers=auth("admin"),
    ) as resp:
        body = await resp.json()
        assert resp.status == 201, body
        return body["id"]


async def _cloud_event(gw: Any, rid: str) -> str:
    def status() -> str | None:
        for e in gw.engine.get(rid)["events"]:
            if e["kind"] == "cloud":
                return e["detail"]["status"]
        return None

    return await until(status, 20, "cloud load")


async def test_rollout_loads_the_version_into_the_cloud_tier(
    gateway_settings: Callable[..., Any],
    http: aiohttp.ClientSession,
    bundle_set: BundleSet,
    mosquitto: Any,
    tmp_path: Path,
) -> None:
    cloud_repo = tmp_path / "cloud-repo"
    token = tmp_path / "cloud-admin-token"
    token.write_text("cloud-admin-token-for-tests\n")  # the tier only lets an admin load
    offload = OffloadSettings(
        repository=cloud_repo,
        host="127.0.0.1",
        grpc_port=0,
        http_port=-1,
        metrics_port=-1,
        backend="onnxruntime",
        admin_token_file=token,
    )
    async with serve_offload(offload) as server:
        settings = gateway_settings(
            cloud=f"127.0.0.1:{server.port}",
            cloud_repository=cloud_repo,
            cloud_admin_token_file=token,
        )
        async with serve(settings) as gw:
            await push(http, gw, bundle_set.good[2])
            peer = Peer(mosquitto.url)
            try:
                rid = await _roll_out_v2(http, gw, peer, "c1")
                status = await _cloud_event(gw, rid)
                assert status.startswith("loaded on"), status
                assert 2 in server.store.ready_versions(MODEL)
                assert (cloud_repo / MODEL / "2" / "model.onnx").exists()
            finally:
                peer.publish(gw.topics.status("c1"), b"")
                peer.close()


async def test_cloud_tier_down_is_recorded_and_the_edge_rollout_goes_on(
    gateway_settings: Callable[..., Any],
    http: aiohttp.ClientSession,
    bundle_set: BundleSet,
    mosquitto: Any,
) -> None:
    async with serve(gateway_settings(cloud=f"127.0.0.1:{free_port()}")) as gw:
        await push(http, gw, bundle_set.good[2])
        peer = Peer(mosquitto.url)
        peer.subscribe(gw.topics.desired("c2"))
        try:
            rid = await _roll_out_v2(http, gw, peer, "c2")
            status = await _cloud_event(gw, rid)
            assert status.startswith("failed:"), status
            await until(lambda: peer.got(gw.topics.desired("c2")), 10, "desired state")
        finally:
            peer.publish(gw.topics.status("c2"), b"")
            peer.publish(gw.topics.desired("c2"), b"")
            peer.close()
