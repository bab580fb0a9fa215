"""The gateway's MQTT side: heartbeats in (``fleet/+/status``), desired state out (retained).

paho runs its network loop in its own thread; messages hop onto the event loop with
``call_soon_threadsafe`` so fleet and rollout state are only touched from the loop.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt

from bus.broker import BrokerUrl, make_client
from bus.topics import Topics
from shell.logs import Outage

log = logging.getLogger(__name__)


class Bus:
    """One paho client: subscribe to heartbeats, publish retained desired state."""

    def __init__(
        self,
        broker: str,
        topics: Topics,
        on_status: Callable[[str, bytes], None],
        *,
        ca_file: str | None = None,
        share_group: str | None = None,
    ) -> None:
        self.url = BrokerUrl.parse(broker)
        # A shared subscription: the broker hands each heartbeat to one replica of the
        # group (retained ones to none: the database already holds what they said).
        self._status_filter = topics.status_filter()
        if share_group:
            self._status_filter = f"$share/{share_group}/{self._status_filter}"
        self.topics = topics
        self.on_status = on_status
        #: Called on the event loop after every (re)connect.
        self.on_connected: Callable[[], None] | None = None
        self.connected = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._client = make_client(
            self.url, f"cloud-gateway-{secrets.token_hex(4)}", ca_file=ca_file
        )
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message
        self._client.on_connect_fail = self._on_connect_fail
        # paho retries every second or so: one WARNING per outage, not one per retry.
        self._outage = Outage(log, f"broker {self.url}")
        self._stopping = False
        self._ready = asyncio.Event()

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        # connect_async: the gateway serves its API even while the broker is down.
        self._client.connect_async(self.url.host, self.url.port, keepalive=30)
        self._client.loop_start()

    async def wait_connected(self, within_s: float) -> bool:
        try:
            async with asyncio.timeout(within_s):
                await self._ready.wait()
        except TimeoutError:
            return False
        return True

    def unreachable(self, reason: str) -> None:
        """Report the broker as down (a no-op beyond DEBUG if already reported)."""
        self._outage.failed(reason)

    def stop(self) -> None:
        self._stopping = True
        self._client.disconnect()
        self._client.loop_stop()

    def publish(self, topic: str, payload: bytes) -> None:
        # Retained + QoS 1: an agent that connects later still gets its desired state,
        # and paho queues the message while the broker is unreachable.
        info = self._client.publish(topic, payload, qos=1, retain=True)
        if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
            log.warning("publish to %s failed: %s", topic, mqtt.error_string(info.rc))

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, rc: Any, props: Any = None
    ) -> None:
        if rc != 0:
            self._outage.failed(f"connection refused: {rc}")
            return
        self.connected = True
        client.subscribe(self._status_filter, qos=1)
        self._outage.recovered()
        log.info("connected to %s", self.url)
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._ready.set)
            if self.on_connected is not None:
                self._loop.call_soon_threadsafe(self.on_connected)

    def _on_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, rc: Any, props: Any = None
    ) -> None:
        self.connected = False
        if not self._stopping:
            self._outage.failed(f"connection lost: {rc}")
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._ready.clear)

    def _on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        self._outage.failed("cannot connect")

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        parts = msg.topic.split("/")
        if len(parts) < 3 or parts[-1] != "status" or self._loop is None:
            return
        self._loop.call_soon_threadsafe(self.on_status, parts[-2], bytes(msg.payload))
