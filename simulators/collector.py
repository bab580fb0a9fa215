"""The collector: subscribes to results and agent status, records what users would see.

Recording is cheap (append to columns in the paho thread); the figures are computed
afterwards by :func:`simulators.metrics.analyze`, so a run's raw data can be kept and
re-analysed.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as mqtt
from pydantic import ValidationError

from bus.broker import BrokerUrl, make_client
from bus.heartbeat import Heartbeat
from bus.results import Result
from bus.topics import Topics


@dataclass
class ResultColumns:
    """One entry per received result message, column-wise."""

    recv: list[float] = field(default_factory=list)
    ts: list[float] = field(default_factory=list)
    stream: list[str] = field(default_factory=list)
    seq: list[int] = field(default_factory=list)
    route: list[str] = field(default_factory=list)
    version: list[int] = field(default_factory=list)
    model: list[str] = field(default_factory=list)
    agent: list[str] = field(default_factory=list)
    deadline_met: list[bool] = field(default_factory=list)
    agent_ms: list[float] = field(default_factory=list)
    anomaly: list[bool | None] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.recv)

    def to_dict(self) -> dict[str, list[Any]]:
        return {k: list(v) for k, v in self.__dict__.items()}


class Collector:
    """Subscribes ``results/#`` and ``fleet/+/status`` on the broker at ``url``."""

    def __init__(self, url: str, *, topics: Topics | None = None, qos: int = 1) -> None:
        self.topics = topics or Topics()
        self.url = BrokerUrl.parse(url)
        self.qos = qos
        self.results = ResultColumns()
        self.bad = 0
        self.status: dict[str, dict[str, Any]] = {}
        self.status_log: list[tuple[float, str, dict[str, Any]]] = []
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self.client = make_client(
            self.url, f"fleet-sim-collector-{uuid.uuid4().hex[:8]}", max_inflight=65535
        )
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *a: self._ready.set()
        self.client.on_message = self._on_message

    def start(self, timeout: float = 10.0) -> Collector:
        self.client.connect(self.url.host, self.url.port, keepalive=30)
        self.client.loop_start()
        if not self._ready.wait(timeout):
            raise TimeoutError(f"collector could not subscribe on {self.url}")
        return self

    def stop(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()

    def _on_connect(self, client: mqtt.Client, userdata: object, *args: object) -> None:
        client.subscribe([(f"{self.topics.results}/#", self.qos), (self.topics.status_filter(), 1)])

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        now = time.time()
        try:
            body = json.loads(msg.payload)
        except ValueError:
            self.bad += 1
            return
        if msg.topic.startswith(self.topics.results + "/"):
            self._record(now, msg.topic, body)
        elif isinstance(body, dict):
            try:
                Heartbeat.model_validate(body)  # the contract (bus.heartbeat)
            except ValidationError:
                self.bad += 1
                return
            agent = str(body.get("agent_id") or msg.topic.split("/")[1])
            with self._lock:
                self.status[agent] = body
                self.status_log.append((now, agent, body))

    def _record(self, now: float, topic: str, body: Any) -> None:
        try:
            res = Result.model_validate(body)  # the contract (bus.results)
        except ValidationError:
            self.bad += 1
            return
        stream = topic[len(self.topics.results) + 1 :]
        row = (
            now,
            res.ts,
            stream,
            res.seq,
            res.route,
            res.version or 0,
            res.model,
            res.agent,
            res.deadline_met,
            res.latency_ms.total,
            res.output.anomaly,
        )
        r = self.results
        columns: tuple[list[Any], ...] = (
            r.recv,
            r.ts,
            r.stream,
            r.seq,
            r.route,
            r.version,
            r.model,
            r.agent,
            r.deadline_met,
            r.agent_ms,
            r.anomaly,
        )
        with self._lock:
            for column, value in zip(columns, row, strict=True):
                column.append(value)

    def count(self) -> int:
        return len(self.results)

    def versions(self) -> dict[str, dict[str, int]]:
        """Per agent, per model: the version its latest heartbeat reports."""
        out: dict[str, dict[str, int]] = {}
        with self._lock:
            bodies = list(self.status.items())
        for agent, body in bodies:
            beat = Heartbeat.model_validate(body)  # checked when it arrived
            if beat.online:
                out[agent] = {name: m.version or 0 for name, m in beat.models.items()}
        return out

    async def drain(self, quiet_s: float = 2.0, limit_s: float = 30.0) -> None:
        """Until no result arrived for ``quiet_s`` (in-flight results drained) or ``limit_s``."""
        deadline = time.monotonic() + limit_s
        last_n, last_change = self.count(), time.monotonic()
        while time.monotonic() < deadline:
            await asyncio.sleep(0.1)
            n = self.count()
            if n != last_n:
                last_n, last_change = n, time.monotonic()
            elif time.monotonic() - last_change >= quiet_s:
                return
