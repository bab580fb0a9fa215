"""A real edge-agent process with live sensor traffic, for the live dashboard tests."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.request import urlopen

from bus.broker import BrokerUrl, make_client
from tests.conftest import free_port, wait_for_port


def get_json(url: str, timeout: float = 5.0) -> Any:
    with urlopen(url, timeout=timeout) as resp:
        return json.loads(resp.read())


class SensorTraffic:
    """Publishes readings for a few devices at a steady rate, plus some malformed payloads.

    The values switch between two motion patterns now and then, so the classifier's
    label changes and the agent raises class-change alerts; every 50th message is bad
    JSON so dead-letter counters move too.
    """

    def __init__(
        self,
        broker_url: str,
        site: str,
        devices: int = 4,
        rate_hz: float = 50.0,
        prefix: str = "sensors",
    ) -> None:
        self.site = site
        self.devices = [f"dev-{i}" for i in range(devices)]
        self.rate_hz = rate_hz
        self.prefix = prefix
        self.sent = 0
        self.bad = 0
        self._stop = threading.Event()
        self.paused = threading.Event()  # set: publish nothing until cleared
        self._client = make_client(BrokerUrl.parse(broker_url), f"traffic-{os.getpid()}-{site}")
        url = BrokerUrl.parse(broker_url)
        self._client.connect(url.host, url.port)
        self._client.loop_start()
        self._thread = threading.Thread(target=self._run, name="sensor-traffic", daemon=True)

    def start(self) -> SensorTraffic:
        self._thread.start()
        return self

    def _values(self, seq: int, device: int) -> list[float]:
        phase = (seq // 150 + device) % 2  # a new "activity" every 15 s at 10 Hz windows
        t = seq / 10.0
        amp = 0.2 if phase == 0 else 6.0
        return [
            round(amp * math.sin(t * (1.0 + c) + device) + (9.8 if c == 2 else 0.0), 4)
            for c in range(6)
        ]

    def _run(self) -> None:
        seq = 0
        period = 1.0 / self.rate_hz
        next_at = time.monotonic()
        while not self._stop.is_set():
            if self.paused.is_set():
                self._stop.wait(0.05)
                next_at = time.monotonic()
                continue
            for d, device in enumerate(self.devices):
                topic = f"{self.prefix}/{self.site}/{device}/imu"
                if seq % 50 == 49 and d == 0:
                    self._client.publish(topic, b"{not json", qos=0)
                    self.bad += 1
                    continue
                body = {"ts": time.time(), "seq": seq, "values": self._values(seq, d)}
                self._client.publish(topic, json.dumps(body), qos=0)
                self.sent += 1
            seq += 1
            next_at += period
            delay = next_at - time.monotonic()
            if delay > 0:
                self._stop.wait(delay)
            else:
                next_at = time.monotonic()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)
        self._client.loop_stop()
        self._client.disconnect()


class EdgeAgentProcess:
    """``edge-agent`` as a subprocess serving the dashboard on a free port."""

    def __init__(
        self,
        workdir: Path,
        broker_url: str,
        repository: Path,
        *extra: str,
        prefix: str | None = None,
        agent_id: str | None = None,
        site: str = "site-dash",
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.agent_id = agent_id or f"dash-{self.port}"
        self.site = site
        # A unique topic prefix keeps this agent and its traffic apart from other tests
        # sharing the session's broker.
        self.prefix = prefix or f"t{uuid.uuid4().hex[:10]}"
        self.log = (workdir / f"{self.agent_id}.log").open("w")
        exe = shutil.which("edge-agent", path=str(Path(sys.executable).parent)) or "edge-agent"
        self.proc = subprocess.Popen(
            [
                exe,
                "--agent-id", self.agent_id,
                "--site", self.site,
                "--broker", broker_url,
                "--repository", str(repository),
                "--model", "motion-edge",
                "--http-port", str(self.port),
                "--heartbeat-s", "1",
                "--topic-prefix", self.prefix,
                "--topics-filter", f"{self.prefix}/sensors/+/+/+",
                *extra,
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            cwd=workdir,
        )  # fmt: skip
        try:
            wait_for_port(self.port, timeout=20)
            deadline = time.monotonic() + 20
            while not get_json(self.url + "api/status").get("broker_connected"):
                if time.monotonic() > deadline:
                    raise TimeoutError("edge-agent never connected to the broker")
                time.sleep(0.1)
        except BaseException:
            self.stop()
            raise

    def status(self) -> dict[str, Any]:
        return get_json(self.url + "api/status")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
