"""Result collector: subscribes to ``results/#`` and measures publish -> result latency."""

from __future__ import annotations

import json
import threading
import time

import numpy as np

from offload.mqtt import BrokerUrl, make_client


class Collector:
    """Counts unique (device, seq) results; latency = receive time - the reading's ``ts``."""

    def __init__(self, port: int, topic: str = "results/#") -> None:
        self._client = make_client(
            BrokerUrl.parse(f"mqtt://127.0.0.1:{port}"), f"collector-{time.monotonic_ns()}"
        )
        self._client.on_message = self._on_message
        self._client.on_connect = lambda c, *a: c.subscribe(topic, 0)
        self._seen: set[tuple[str, int]] = set()
        self._lat: list[float] = []
        self._ready = threading.Event()
        self._client.on_subscribe = lambda *a: self._ready.set()
        self._port = port

    def _on_message(self, client: object, userdata: object, msg: object) -> None:
        now = time.time()
        d = json.loads(msg.payload)  # type: ignore[attr-defined]
        self._seen.add((d["device"], d["seq"]))
        self._lat.append(now - d["ts"])

    def start(self) -> None:
        self._client.connect("127.0.0.1", self._port)
        self._client.loop_start()
        if not self._ready.wait(5.0):
            raise TimeoutError("collector did not subscribe")

    @property
    def unique(self) -> int:
        return len(self._seen)

    def wait_quiet(self, expected: int, timeout: float) -> None:
        end = time.monotonic() + timeout
        last, last_change = -1, time.monotonic()
        while time.monotonic() < end and self.unique < expected:
            n = len(self._lat)
            if n != last:
                last, last_change = n, time.monotonic()
            elif time.monotonic() - last_change > 1.0:
                return
            time.sleep(0.05)

    def latencies_ms(self) -> tuple[float, float]:
        if not self._lat:
            return (float("nan"), float("nan"))
        q = np.percentile(np.asarray(self._lat) * 1000.0, [50, 99])
        return float(q[0]), float(q[1])

    def stop(self) -> None:
        self._client.loop_stop()
        self._client.disconnect()
