"""A real ``cloud-gateway`` process and small REST helpers for the fleet page tests."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.error import HTTPError
from urllib.request import Request, urlopen

from tests.conftest import free_port, wait_for_port

TOKENS = {"admin": "dash-admin-token", "agent": "dash-agent-token", "viewer": "dash-viewer-token"}


def api(base: str, method: str, path: str, role: str = "viewer", body: bytes | None = None) -> Any:
    req = Request(base + path, data=body, method=method)
    req.add_header("Authorization", f"Bearer {TOKENS[role]}")
    try:
        with urlopen(req, timeout=10) as resp:
            return json.loads(resp.read())
    except HTTPError as exc:
        raise AssertionError(f"{method} {path}: {exc.code} {exc.read()[:300]!r}") from None


class GatewayProcess:
    """``cloud-gateway serve`` on a free port with admin/agent/viewer tokens."""

    def __init__(self, workdir: Path, broker_url: str, trusted_keys: Path, prefix: str) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        tokens = workdir / "tokens"
        tokens.write_text("".join(f"{role} {token}\n" for role, token in TOKENS.items()))
        self.agent_token_file = workdir / "agent.token"
        self.agent_token_file.write_text(TOKENS["agent"] + "\n")
        self.log = (workdir / "gateway.log").open("w")
        exe = shutil.which("cloud-gateway", path=str(Path(sys.executable).parent))
        self.proc = subprocess.Popen(
            [
                exe or "cloud-gateway", "serve",
                "--port", str(self.port),
                "--db-path", str(workdir / "gateway.sqlite"),
                "--blob-dir", str(workdir / "blobs"),
                "--broker", broker_url,
                "--topic-prefix", prefix,
                "--trusted-keys", str(trusted_keys),
                "--tokens-file", str(tokens),
                "--tick-s", "0.2",
                "--heartbeat-timeout-s", "6",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            cwd=workdir,
        )  # fmt: skip
        try:
            wait_for_port(self.port, timeout=20)
        except BaseException:
            self.stop()
            raise

    def push(self, bundle: Path) -> dict[str, Any]:
        return api(self.url, "POST", "/api/v1/models", "admin", bundle.read_bytes())

    def get(self, path: str) -> Any:
        return api(self.url, "GET", path)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
