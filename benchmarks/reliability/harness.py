"""Real processes for the fault table: mosquitto, edge-agent, offload-server, sensors.

Everything runs on loopback: a mosquitto with the persistence settings of the shipped
edge broker config (``manifests/edge/base/mosquitto/mosquitto.conf``), ``edge-agent`` and
``offload-server`` as subprocesses of this interpreter, paho sensors publishing QoS-1
readings with their own persistent sessions (what ``docs/reliability.md`` asks of real
sensors), and a persistent QoS-1 subscriber counting the live results.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter, deque
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt

from bus.broker import BrokerUrl, make_client

ROOT = Path(__file__).resolve().parents[2]
EDGE_BROKER_CONF = ROOT / "manifests" / "edge" / "base" / "mosquitto" / "mosquitto.conf"
#: Lines of the shipped broker config that decide what survives a broker crash.
DURABILITY_KEYS = (
    "persistence",
    "autosave_interval",
    "autosave_on_changes",
    "max_queued_messages",
    "max_inflight_messages",
)
WINDOW, HOP = 100, 10  # motion-edge: a result per 10 readings once 100 are in


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


def shipped_durability_lines(conf: Path | None = None) -> list[str]:
    """The persistence lines of the shipped edge broker config (location excluded)."""
    out = []
    for line in (conf or EDGE_BROKER_CONF).read_text().splitlines():
        key = line.split("#", 1)[0].split()
        if key and key[0] in DURABILITY_KEYS:
            out.append(" ".join(key))
    return out


class Broker:
    """mosquitto on a fixed loopback port; ``persistent`` uses the shipped settings."""

    def __init__(
        self,
        workdir: Path,
        *,
        persistent: bool = True,
        persistence: str | None = None,
        extra: str = "",
    ) -> None:
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"mqtt://127.0.0.1:{self.port}"
        user = f"user {getpass.getuser()}\n" if os.geteuid() == 0 else ""
        durable = (
            "\n".join(shipped_durability_lines()) + f"\npersistence_location {self.dir}/\n"
            if persistent
            else "persistence false\nmax_queued_messages 1000000\nmax_inflight_messages 0\n"
        )
        if persistence is not None:  # the given persistence lines, in this directory
            durable = f"{persistence}persistence_location {self.dir}/\n"
        self.conf = self.dir / "mosquitto.conf"
        self.conf.write_text(
            f"listener {self.port} 127.0.0.1\n{user}allow_anonymous true\n"
            f"set_tcp_nodelay true\n{durable}{extra}"
            f"log_dest file {self.dir}/mosquitto.log\nlog_type error\nlog_type warning\n"
        )
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        self.proc = subprocess.Popen(["mosquitto", "-c", str(self.conf)])
        wait_port(self.port)

    def kill(self) -> None:
        """SIGKILL: no shutdown save of the persistence file."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class Proc:
    """A Python subprocess whose output is kept line by line."""

    def __init__(self, argv: list[str], ready: str) -> None:
        self.argv = argv
        self.proc = subprocess.Popen(
            [sys.executable, *argv], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        self.lines: list[str] = []
        self.match: re.Match[str] | None = None
        self._ready_re = re.compile(ready)
        self._ready = threading.Event()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        for line in self.proc.stdout:  # type: ignore[union-attr]
            self.lines.append(line.rstrip())
            if self.match is None and (m := self._ready_re.search(line)):
                self.match = m
                self._ready.set()
        self._ready.set()

    def wait_ready(self, timeout: float = 30.0) -> re.Match[str]:
        if not self._ready.wait(timeout) or self.match is None:
            raise RuntimeError(f"{self.argv[:2]} not ready:\n" + "\n".join(self.lines[-30:]))
        return self.match

    def kill(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        return self.proc.wait(15)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            return self.proc.wait(20)
        except subprocess.TimeoutExpired:
            return self.kill()


class Agent(Proc):
    """``edge-agent`` serving motion-edge on ``{prefix}/sensors/+/+/+``."""

    def __init__(self, broker_url: str, repo: Path, prefix: str, *extra: str) -> None:
        super().__init__(
            [
                "-m",
                "edge_agent",
                *("--model", "motion-edge", "--agent-id", f"{prefix}-agent"),
                *("--broker", broker_url, "--repository", str(repo)),
                *("--topic-prefix", prefix, "--topics-filter", f"{prefix}/sensors/+/+/+"),
                *("--http-port", "0", "--log-level", "WARNING", *extra),
            ],
            r"edge-agent ready .*http=http://[^:]+:(\d+)",
        )

    @property
    def port(self) -> int:
        return int(self.wait_ready().group(1))

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def status(self) -> dict[str, Any]:
        return json.loads(self.get("/api/status")[1])

    def metric(self, name: str) -> float | None:
        for line in self.get("/metrics")[1].splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                return float(line.rsplit(" ", 1)[1])
        return None


class OffloadServer(Proc):
    def __init__(self, repo: Path, port: int | None = None) -> None:
        self.port = port or free_port()
        super().__init__(
            [
                "-m",
                "offload",
                *("--repository", str(repo), "--host", "127.0.0.1"),
                *("--grpc-port", str(self.port), "--metrics-port", "-1", "--log-level", "WARNING"),
            ],
            r"offload-server ready",
        )


def sensor_client(url: str, client_id: str) -> mqtt.Client:
    """A sensor as docs/reliability.md asks: QoS 1, its own persistent session, quick
    reconnects (paho re-sends unacknowledged QoS-1 messages after reconnecting)."""
    c = make_client(BrokerUrl.parse(url), client_id, clean_session=False)
    c.reconnect_delay_set(min_delay=0.1, max_delay=1)
    return c


class Sensors:
    """``streams`` sensors of one site publishing ``{"ts","seq","values"}`` at QoS 1.

    They behave as docs/reliability.md asks of real sensors: a persistent session, and
    readings kept *in order* across a reconnect. paho re-sends unacknowledged messages
    after the CONNACK, but a reading published meanwhile can overtake them, and the agent
    drops a reading older than one it has already seen (``late``). So after a disconnect
    new readings wait in a local FIFO until everything handed to paho is acknowledged.
    """

    def __init__(
        self, url: str, prefix: str, streams: int = 3, topics: list[str] | None = None
    ) -> None:
        self.topics = topics or [f"{prefix}/sensors/s1/d{i}/acc" for i in range(streams)]
        self.client = sensor_client(url, f"{prefix}-sensors")
        self.client.on_publish = self._on_publish
        self.client.on_disconnect = self._on_disconnect
        u = BrokerUrl.parse(url)
        self.client.connect(u.host, u.port)
        self.client.loop_start()
        self.sent = 0  # readings produced
        self.handed = 0  # readings given to paho
        self.acked = 0  # PUBACKs (paho re-sends what was unacknowledged after a reconnect)
        self.held = 0  # readings that waited in the FIFO after a disconnect
        self._paused = False
        self._fifo: deque[tuple[str, str]] = deque()

    def _on_publish(self, *args: Any) -> None:
        self.acked += 1

    def _on_disconnect(self, *args: Any) -> None:
        self._paused = True

    def publish(self, seq: int) -> None:
        vals = [((seq * 7 + k * 13) % 17) / 17.0 for k in range(6)]
        body = json.dumps({"ts": time.time(), "seq": seq, "values": vals})
        for t in self.topics:
            self._fifo.append((t, body))
            self.sent += 1
        self._drain()

    def _drain(self) -> None:
        if self._paused:
            if not self.client.is_connected() or self.acked < self.handed:
                self.held = max(self.held, len(self._fifo))
                return  # paho is still re-sending what it had: nothing may overtake it
            self._paused = False
        while self._fifo:
            t, body = self._fifo.popleft()
            self.client.publish(t, body, qos=1)
            self.handed += 1

    def unacked(self) -> int:
        self._drain()
        return self.sent - self.acked

    def wait_acked(self, timeout: float = 30.0) -> int:
        end = time.monotonic() + timeout
        while self.unacked() > 0 and time.monotonic() < end:
            time.sleep(0.05)
        return self.unacked()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class Results:
    """A persistent QoS-1 subscriber counting results by (device, seq)."""

    def __init__(self, url: str, prefix: str) -> None:
        self.seen: Counter[tuple[str, int]] = Counter()
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self.client = sensor_client(url, f"{prefix}-results")
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *a: self._subscribed.set()
        self.client.on_connect = lambda c, *a: c.subscribe(f"{prefix}/results/#", 1)
        u = BrokerUrl.parse(url)
        self.client.connect(u.host, u.port)
        self.client.loop_start()
        if not self._subscribed.wait(10):
            raise RuntimeError("results subscription not acknowledged")

    def _on_message(self, c: Any, u: Any, msg: mqtt.MQTTMessage) -> None:
        r = json.loads(msg.payload)
        with self._lock:
            self.seen[(r["device"], int(r["seq"]))] += 1

    def snapshot(self) -> Counter[tuple[str, int]]:
        with self._lock:
            return Counter(self.seen)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def expected_results(streams: int, readings: int) -> set[tuple[str, int]]:
    return {(f"d{i}", s) for i in range(streams) for s in range(WINDOW - 1, readings, HOP)}


def stored_results(db: Path) -> Counter[tuple[str, int]]:
    """(device, seq) -> rows in the store's results table (read-only, WAL-safe)."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return Counter(conn.execute("SELECT device, seq FROM results").fetchall())
    finally:
        conn.close()


def wait_until(cond: Any, timeout: float, step: float = 0.05) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        with contextlib.suppress(Exception):
            if cond():
                return True
        time.sleep(step)
    with contextlib.suppress(Exception):
        return bool(cond())
    return False
