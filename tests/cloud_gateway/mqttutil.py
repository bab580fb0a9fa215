"""Tiny real-broker helpers for gateway tests (paho via bus.broker.make_client)."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt

from bus.broker import BrokerUrl, make_client


class Peer:
    """A connected paho client that records messages of the filters it subscribes to."""

    def __init__(
        self, url: str, *, will: tuple[str, bytes] | None = None, client_id: str = ""
    ) -> None:
        self.client = make_client(BrokerUrl.parse(url), client_id or f"peer-{uuid.uuid4().hex[:8]}")
        if will:
            self.client.will_set(will[0], will[1], qos=1, retain=True)
        self.messages: list[tuple[str, bytes, bool]] = []
        self.lock = threading.Lock()
        self.client.on_message = self._on_message
        connected = threading.Event()
        self.client.on_connect = lambda *a, **k: connected.set()
        parsed = BrokerUrl.parse(url)
        self.client.connect(parsed.host, parsed.port, keepalive=5)
        self.client.loop_start()
        assert connected.wait(5), "no connection to the broker"

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        with self.lock:
            self.messages.append((msg.topic, bytes(msg.payload), bool(msg.retain)))

    def subscribe(self, topic: str) -> None:
        """Subscribe and wait for the broker's SUBACK, so nothing published after is missed."""
        acked = threading.Event()
        self.client.on_subscribe = lambda *a, **k: acked.set()
        self.client.subscribe(topic, qos=1)
        assert acked.wait(10), f"no SUBACK for {topic}"

    def publish(self, topic: str, payload: dict[str, Any] | bytes, retain: bool = True) -> None:
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.client.publish(topic, data, qos=1, retain=retain).wait_for_publish(5)

    def got(self, topic: str) -> list[bytes]:
        with self.lock:
            return [p for t, p, _ in self.messages if t == topic]

    def drop(self) -> None:
        """Vanish without DISCONNECT so the broker publishes the last will."""
        sock = self.client.socket()
        self.client.loop_stop()
        if sock is not None:
            sock.close()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


async def until(check: Callable[[], Any], within: float = 10.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out after {within} s waiting for {what}")
