"""Processes of the edge-agent benchmark: mosquitto and the agents under test."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Broker:
    """mosquitto with TCP_NODELAY (without it 40 ms Nagle stalls appear at every rate)."""

    def __init__(self, workdir: Path) -> None:
        exe = shutil.which("mosquitto")
        if exe is None:
            raise RuntimeError("mosquitto is not installed")
        self.port = _free_port()
        conf = workdir / "mosquitto.conf"
        conf.write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\n"
            "set_tcp_nodelay true\npersistence false\nmax_queued_messages 200000\n"
            "max_inflight_messages 0\nlog_dest none\n"
        )
        self.proc = subprocess.Popen([exe, "-c", str(conf)])
        end = time.monotonic() + 5
        while time.monotonic() < end:
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise TimeoutError("mosquitto did not start")

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(5)


class AgentProc:
    """A subprocess that prints a line containing ``marker`` when it is ready."""

    def __init__(
        self,
        cmd: list[str],
        marker: str,
        cwd: Path | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.popen = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=cwd, env=env
        )
        self._marker = marker
        self._ready_at: float | None = None
        self._event = threading.Event()
        self.lines: list[str] = []
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        for line in self.popen.stdout:  # type: ignore[union-attr]
            self.lines.append(line.rstrip())
            del self.lines[:-200]
            if self._ready_at is None and self._marker in line:
                self._ready_at = time.monotonic()
                self._event.set()
        self._event.set()

    def wait_ready(self, timeout: float = 30.0) -> float:
        if not self._event.wait(timeout) or self._ready_at is None:
            raise RuntimeError("agent did not become ready:\n" + "\n".join(self.lines[-20:]))
        return self._ready_at


def export_baseline(rev: str, dest: Path) -> Path:
    """The agent's packages as of git ``rev`` in ``dest`` (read-only ``git archive``): the
    agent and every package below it, so a revision from before a package was split or
    renamed still imports what it imported then."""
    dest.mkdir(parents=True, exist_ok=True)
    listed = subprocess.run(
        ["git", "-C", str(ROOT), "ls-tree", "--name-only", rev],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    packages = [p for p in ("edge_agent", "bus", "shell", "offload", "models") if p in listed]
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", rev, *packages], check=True, capture_output=True
    )
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)
    return dest


def start_edge(
    broker: Broker,
    repo: Path,
    hop: int,
    index: int,
    n: int,
    workdir: Path,
    src: Path | None = None,
    *,
    qos: int = 0,
) -> AgentProc:
    """An edge-agent process; with ``src``, its packages come from there (see
    :func:`export_baseline`; the rest of the project from this checkout): the before/after
    comparison."""
    filt = f"sensors/s{index}/+/+" if n > 1 else "sensors/+/+/+"
    cmd = [
        sys.executable,
        "-m",
        "edge_agent",
        "--agent-id",
        f"bench-{index}",
        "--broker",
        broker.url,
        "--repository",
        str(repo),
        "--model",
        "motion-edge",
        "--hop",
        str(hop),
        "--http-port",
        "0",
        "--policy",
        "local-only",
        "--clean-session",
        "true",
        "--qos",
        str(qos),
        "--topics-filter",
        filt,
        "--log-level",
        "WARNING",
        "--heartbeat-s",
        "5",
    ]
    if qos:  # acknowledged readings are journaled first: measure that cost too
        cmd += ["--journal-dir", str(workdir / f"journal-{index}-{time.monotonic_ns()}")]
    if src is None:
        return AgentProc(cmd, "edge-agent ready")
    # ``-m`` puts the working directory first on sys.path: run from ``src``.
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(src), str(ROOT)]))
    return AgentProc(cmd, "edge-agent ready", cwd=src, env=env)


def start_naive(broker: Broker, repo: Path, hop: int, qos: int = 0) -> AgentProc:
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.edge_agent.naive_agent",
        "--broker",
        broker.url,
        "--model-path",
        str(repo / "motion-edge" / "1" / "model.onnx"),
        "--hop",
        str(hop),
        "--qos",
        str(qos),
    ]
    return AgentProc(cmd, "naive-agent ready")


def stop_all(procs: list[AgentProc]) -> None:
    for p in procs:
        p.popen.terminate()
    for p in procs:
        try:
            p.popen.wait(5)
        except subprocess.TimeoutExpired:
            p.popen.kill()
            p.popen.wait()
