"""The few gateway REST calls fleet-sim needs: upload a bundle, start and watch a rollout."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import aiohttp

from models.errors import EdgecloudError, Unavailable

TERMINAL = ("succeeded", "rolled_back", "failed", "cancelled")


class GatewayError(EdgecloudError):
    """The gateway answered with an error document."""


class GatewayClient:
    def __init__(self, base_url: str, token: str) -> None:
        self.base_url = base_url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {token}"}
        self._http: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> GatewayClient:
        self._http = aiohttp.ClientSession(
            headers=self._headers, timeout=aiohttp.ClientTimeout(total=60)
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._http is not None:
            await self._http.close()

    async def _call(self, method: str, path: str, **kw: Any) -> Any:
        assert self._http is not None, "use `async with GatewayClient(...)`"
        try:
            async with self._http.request(method, self.base_url + path, **kw) as resp:
                body = await resp.json(content_type=None)
                if resp.status >= 400:
                    raise GatewayError(f"{method} {path}: {resp.status} {body}")
                return body
        except aiohttp.ClientError as exc:
            raise Unavailable(f"gateway {self.base_url} unreachable: {exc}") from exc

    async def upload(self, bundle: Path) -> dict[str, Any]:
        data = await asyncio.to_thread(bundle.read_bytes)
        return await self._call(
            "POST", "/api/v1/models", data=data,
            headers={"Content-Type": "application/octet-stream"},
        )  # fmt: skip

    async def rollout(self, request: dict[str, Any]) -> dict[str, Any]:
        return await self._call("POST", "/api/v1/rollouts", json=request)

    async def get_rollout(self, rollout_id: str) -> dict[str, Any]:
        return await self._call("GET", f"/api/v1/rollouts/{rollout_id}")

    async def fleet(self) -> list[dict[str, Any]]:
        return await self._call("GET", "/api/v1/fleet")

    async def wait_rollout(self, rollout_id: str, limit_s: float = 60.0) -> dict[str, Any]:
        """Poll until the rollout reaches a terminal state or ``limit_s`` passes."""
        deadline = time.monotonic() + limit_s
        info = await self.get_rollout(rollout_id)
        while info.get("state") not in TERMINAL and time.monotonic() < deadline:
            await asyncio.sleep(0.5)
            info = await self.get_rollout(rollout_id)
        return info
