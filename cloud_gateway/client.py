"""A small synchronous REST client for the CLI subcommands (stdlib only, no event loop)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from models.errors import EdgecloudError, Status, Unavailable


class ApiError(EdgecloudError):
    """An error answer from the gateway, carrying its JSON body."""

    def __init__(self, http_status: int, body: dict[str, Any]) -> None:
        try:
            status = Status(body.get("status", "INTERNAL"))
        except ValueError:
            status = Status.INTERNAL
        super().__init__(str(body.get("message", body)), status=status)
        self.http_status = http_status
        self.error = str(body.get("error", "http-error"))

    @property
    def reason(self) -> str:
        return self.error


class GatewayClient:
    def __init__(self, url: str, token: str | None, timeout_s: float = 120.0) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self.timeout_s = timeout_s

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        data: bytes | None = None,
        content_type: str = "application/json",
    ) -> Any:
        headers = {"Accept": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        if body is not None:
            data = json.dumps(body).encode()
        if data is not None:
            headers["Content-Type"] = content_type
        req = urllib.request.Request(self.url + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            try:
                parsed = json.loads(raw)
            except ValueError:
                parsed = {"error": "http-error", "message": raw.decode(errors="replace")[:500]}
            raise ApiError(exc.code, parsed) from None
        except (urllib.error.URLError, OSError) as exc:
            raise Unavailable(f"cannot reach the gateway at {self.url}: {exc}") from None
        return json.loads(raw) if raw else None

    def get(self, path: str) -> Any:
        return self.request("GET", path)

    def post(self, path: str, body: Any = None) -> Any:
        return self.request("POST", path, body if body is not None else {})

    def push(self, bundle: Path) -> dict[str, Any]:
        return self.request(
            "POST",
            "/api/v1/models",
            data=bundle.read_bytes(),
            content_type="application/octet-stream",
        )
