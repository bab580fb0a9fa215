"""Fixtures for offload tests: tiny ONNX repositories and real offload-server processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import free_port
from tests.offload.graphs import make_repository

READY_MARK = "offload-server ready"
#: The admin bearer token every test server accepts for repository load/unload.
ADMIN_TOKEN = "test-admin-token-0123456789"
ADMIN = {"authorization": f"Bearer {ADMIN_TOKEN}"}


class ServerProcess:
    """``python -m offload`` on free loopback ports; waits for its ready line."""

    def __init__(
        self,
        repository: Path,
        *args: str,
        port: int | None = None,
        timeout: float = 30.0,
        admin_token: str | None = ADMIN_TOKEN,
    ) -> None:
        self.port = port or free_port()
        self.metrics_port = free_port()
        self.http_port = free_port()
        self.target = f"127.0.0.1:{self.port}"
        self.http_target = f"127.0.0.1:{self.http_port}"
        self._tmp = tempfile.TemporaryDirectory(prefix="offload-admin-")
        if admin_token is not None:
            token_file = Path(self._tmp.name) / "admin-tokens"
            token_file.write_text(admin_token + "\n")
            args = ("--admin-token-file", str(token_file), *args)
        cmd = [
            sys.executable,
            "-m",
            "offload",
            "--repository",
            str(repository),
            "--host",
            "127.0.0.1",
            "--grpc-port",
            str(self.port),
            "--metrics-port",
            str(self.metrics_port),
            "--http-port",
            str(self.http_port),
            *args,
        ]
        env = {k: v for k, v in os.environ.items() if not k.startswith("OFFLOAD_")}
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
        )
        self.lines: list[str] = []
        self._ready = threading.Event()
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()
        if not self._ready.wait(timeout):
            self.kill()
            raise RuntimeError("offload-server did not get ready:\n" + "".join(self.lines))

    def _drain(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)
            if READY_MARK in line:
                self._ready.set()
        self._ready.set()  # exited: wake the waiter, which then reports the log

    @property
    def log(self) -> str:
        return "".join(self.lines)

    def metrics(self) -> str:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.read().decode()

    def metric(self, name: str, **labels: str) -> float:
        """Sum of the samples of ``name`` whose labels include ``labels``."""
        total = 0.0
        for line in self.metrics().splitlines():
            if not line.startswith(name + "{") and not line.startswith(name + " "):
                continue
            head, _, value = line.rpartition(" ")
            if all(f'{k}="{v}"' in head for k, v in labels.items()):
                total += float(value)
        return total

    def wait(self, timeout: float = 20.0) -> int:
        """Wait for exit and for the last log lines to be read."""
        rc = self.proc.wait(timeout)
        self._reader.join(5)
        return rc

    def terminate(self, timeout: float = 20.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture(scope="session")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """affine v1 + v2 and slow v1 (shared, never mutated)."""
    return make_repository(tmp_path_factory.mktemp("offload-repo"))


@pytest.fixture(scope="module")
def server(repository: Path) -> Iterator[ServerProcess]:
    """One shared server for read-only tests (small queue and message limits to test them)."""
    proc = ServerProcess(
        repository,
        "--max-queue",
        "4",
        "--workers",
        "2",
        "--max-message-bytes",
        str(1024 * 1024),
        "--log-level",
        "WARNING",
    )
    yield proc
    proc.terminate()
