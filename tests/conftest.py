"""Shared fixtures: free loopback ports, a real mosquitto broker, unique topic prefixes."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, timeout: float = 10.0, host: str = "127.0.0.1") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on {host}:{port} after {timeout}s")


class Mosquitto:
    """A real mosquitto process on a free loopback port."""

    def __init__(self, workdir: Path) -> None:
        exe = shutil.which("mosquitto")
        if exe is None:
            raise RuntimeError("mosquitto is not installed: .ci/run installs it with apt")
        self.port = free_port()
        self.url = f"mqtt://127.0.0.1:{self.port}"
        conf = workdir / "mosquitto.conf"
        conf.write_text(
            f"listener {self.port} 127.0.0.1\n"
            "allow_anonymous true\n"
            "set_tcp_nodelay true\n"
            "persistence false\n"
            "max_queued_messages 200000\n"
            "max_inflight_messages 0\n"
            "log_dest none\n"
        )
        self.proc = subprocess.Popen([exe, "-c", str(conf)])
        wait_for_port(self.port)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="session")
def mosquitto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    broker = Mosquitto(tmp_path_factory.mktemp("mosquitto"))
    yield broker
    broker.stop()


@pytest.fixture
def topic_prefix() -> str:
    """A unique prefix so tests sharing one broker never see each other's messages."""
    return f"t{uuid.uuid4().hex[:10]}"
