"""The agent's MQTT connection: paho driven by our own network thread.

Why not ``loop_start()``: paho's loop does one ``select()`` per received packet and wakes
itself through a socket pair on every publish from another thread. Here the thread
drains every readable packet after one ``select()`` (``loop_read`` until no message
arrives), and other threads' publishes only poke a wake-up socket when there was nothing
to write before, so all socket writes happen on this one thread. QoS-0 readings and
QoS-0 results take the fast paths of :mod:`bus.fast_client`. Readings go straight
to ``AgentCore.ingest`` on this thread (the hot path); readings that arrive at QoS 1 go
to ``ingest_acked`` when given (it must make them durable before it returns: paho
acknowledges right after); everything else (desired state, connection changes) is handed
to the event loop.

Reconnects use full-jitter exponential backoff, capped at ``RECENT_CAP_S`` (~1 s) while
the broker was up within the last ``RECENT_UP_S`` (a restarted broker: sensors with
paho's defaults are back within a second, and readings queued for the agent's session
wait until it is back too), and at ``MAX_BACKOFF_S`` after a longer outage; the
session is persistent (``clean_session=False``, client id = agent id) so QoS-1 readings
published while the agent is away are delivered when it returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import select
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import paho.mqtt.client as mqtt

from bus.broker import BrokerUrl, make_client
from bus.fast_client import FastClient
from bus.frames import FrameEncoder
from shell.logs import Outage

log = logging.getLogger(__name__)

RECENT_UP_S = 60.0  # a broker up this recently is restarting: reconnect quickly
RECENT_CAP_S = 1.0
MAX_BACKOFF_S = 10.0
TICK_S = 0.1  # the tick hook's period (held readings give up waiting on it) and select()'s


def _tls_pending(sock: Any) -> bool:
    pending = getattr(sock, "pending", None)
    return bool(pending and pending())


class MqttLink:
    """One persistent MQTT session: subscriptions in, publishes out."""

    def __init__(
        self,
        url: BrokerUrl,
        client_id: str,
        *,
        filters: list[str],
        qos: int,
        share_group: str | None,
        clean_session: bool,
        ingest: Callable[[str, bytes, float], None],
        control_topics: list[str],
        on_control: Callable[[str, bytes], None],
        on_connection: Callable[[bool], None],
        loop: asyncio.AbstractEventLoop,
        will: tuple[str, str] | None = None,
        ca_file: str | None = None,
        cert_file: str | None = None,
        key_file: str | None = None,
        keepalive: int = 30,
        end_of_burst: Callable[[], None] | None = None,
        mid_burst: Callable[[], None] | None = None,
        tick: Callable[[float], None] | None = None,
        ingest_acked: Callable[[str, bytes, float], None] | None = None,
    ) -> None:
        self.url = url
        self._share = share_group
        self._filters = [f"$share/{share_group}/{f}" if share_group else f for f in filters]
        self._qos = qos
        self._control = control_topics
        self._ingest = ingest
        self._ingest_acked = ingest_acked or ingest
        self._on_control = on_control
        self._on_connection = on_connection
        self._loop = loop
        self._keepalive = keepalive
        self._end_of_burst = end_of_burst or (lambda: None)
        self._mid_burst = mid_burst or (lambda: None)
        self._tick = tick or (lambda now: None)
        self.connected = False
        self._last_up = -RECENT_UP_S  # monotonic time the session was last up
        self.reading = True
        self.messages = 0
        self.dropped_offline = 0  # QoS-0 publishes while disconnected (paho drops them too)
        self._encoder = FrameEncoder()
        self._stop = threading.Event()
        # One WARNING per outage (not per reconnect attempt), as in every other process.
        self._outage = Outage(log, f"broker {url}")
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        c = make_client(
            url,
            client_id,
            clean_session=clean_session,
            ca_file=ca_file,
            cert_file=cert_file,
            key_file=key_file,
            max_inflight=1000,
            client_class=FastClient,
        )
        if will is not None:
            c.will_set(will[0], will[1], qos=1, retain=True)
        c.on_connect = self._connected
        c.on_disconnect = self._disconnected
        c.on_message = self._message
        c.on_socket_register_write = self._want_write
        c.fast_deliver = self._fast_message
        c.fast_acked = self._fast_acked
        self.client: FastClient = c
        self._thread = threading.Thread(target=self._run, name=f"mqtt-{client_id}", daemon=True)

    # -- paho callbacks (network thread) ------------------------------------------------
    def _want_write(self, client: Any, userdata: Any, sock: Any) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            self._wake_w.send(b"w")

    def _connected(
        self, client: mqtt.Client, userdata: Any, flags: Any, rc: Any, props: Any = None
    ) -> None:
        if rc.is_failure:
            self._outage.failed(f"connection refused: {rc}")
            return
        subs = [(f, self._qos) for f in self._filters] + [(t, 1) for t in self._control]
        client.subscribe(subs)
        self.connected = True
        self._outage.recovered()
        self._last_up = time.monotonic()
        log.info("connected to %s (session present: %s)", self.url, flags.session_present)
        self._loop.call_soon_threadsafe(self._on_connection, True)

    def _disconnected(
        self, client: mqtt.Client, userdata: Any, flags: Any, rc: Any, props: Any = None
    ) -> None:
        if self.connected and not self._stop.is_set():
            self._outage.failed(f"connection lost: {rc}")
        self.connected = False
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._on_connection, False)

    def _message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        """paho's path (stragglers the fast path left to it): QoS 1 is acknowledged by
        paho when this returns."""
        self._handle(msg.topic, bytes(msg.payload), self._ingest_acked if msg.qos else self._ingest)

    def _fast_acked(self, topic: str, payload: bytes) -> None:
        """Fast path, QoS 1: the client acknowledges it once this returns."""
        self._handle(topic, payload, self._ingest_acked)

    def _fast_message(self, topic: str, payload: bytes) -> None:
        """Fast path, QoS 0."""
        self._handle(topic, payload, self._ingest)

    def _handle(
        self, topic: str, payload: bytes, ingest: Callable[[str, bytes, float], None]
    ) -> None:
        self.messages += 1
        if topic in self._control:
            self._loop.call_soon_threadsafe(self._on_control, topic, payload)
            return
        try:
            ingest(topic, payload, time.monotonic())
        except Exception:  # ingest validates everything; this is a bug guard, not a path
            log.exception("ingest failed for a message on %s", topic[:200])

    # -- thread ---------------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def _reconnect_delays(self, base: float = 0.2) -> Iterator[float]:
        """Full-jitter backoff whose cap depends on how recently the session was up."""
        attempt = 0
        while True:
            recent = time.monotonic() - self._last_up < RECENT_UP_S
            cap = RECENT_CAP_S if recent else MAX_BACKOFF_S
            yield random.uniform(0, min(cap, base * (2**attempt)))
            attempt += 1

    def _run(self) -> None:
        delays = self._reconnect_delays()
        c = self.client
        while not self._stop.is_set():
            try:
                c.connect(self.url.host, self.url.port, keepalive=self._keepalive)
            except (OSError, ValueError) as exc:
                wait = next(delays)
                self._outage.failed(exc, wait)
                self._stop.wait(wait)
                continue
            began = time.monotonic()
            self._serve(c)
            if self._last_up >= began:
                self._last_up = time.monotonic()  # up until now: a restart is likely
            if self.connected:
                self._disconnected(c, None, None, mqtt.MQTT_ERR_CONN_LOST)
            if not self._stop.is_set():
                delays = self._reconnect_delays()
                self._stop.wait(next(delays))
        with contextlib.suppress(Exception):
            c.write_pending()  # results queued as raw frames go before the DISCONNECT
            c.disconnect()
            c.loop_write()

    def _serve(self, c: FastClient) -> None:
        next_misc = next_tick = 0.0
        tls = getattr(c.socket(), "pending", None) is not None
        while not self._stop.is_set():
            sock = c.socket()
            if sock is None:
                return
            wlist = [sock] if c.wants_write() else []
            try:
                rlist = [sock, self._wake_r] if self.reading else [self._wake_r]
                # Bytes already buffered must not wait for the socket to become readable.
                # So must TLS records OpenSSL has already pulled off the socket.
                ready = self.reading and (c.buffered() or (tls and _tls_pending(sock)))
                readable, _, _ = select.select(rlist, wlist, [], 0.0 if ready else TICK_S)
            except (OSError, ValueError, TypeError):
                return
            if self._wake_r in readable:
                with contextlib.suppress(BlockingIOError, OSError):
                    self._wake_r.recv(4096)
            if sock in readable or ready:
                for i in range(1, 257):  # drain what the socket holds, bounded
                    before = self.messages
                    if c.loop_read() != mqtt.MQTT_ERR_SUCCESS:
                        return
                    if self.messages == before:
                        break
                    # A long burst must not hold back windows completed early in it.
                    self._mid_burst()
                    if not i & 15 and c.wants_write():
                        c.write_pending()
                try:
                    self._end_of_burst()
                except Exception:  # never let a bug stop the network thread
                    log.exception("end-of-burst hook failed")
            if c.wants_write() and c.write_pending() not in (
                mqtt.MQTT_ERR_SUCCESS,
                mqtt.MQTT_ERR_AGAIN,
            ):
                return
            now = time.monotonic()
            if now >= next_tick:
                next_tick = now + TICK_S
                try:
                    self._tick(now)
                except Exception:  # never let a bug stop the network thread
                    log.exception("tick hook failed")
            if now >= next_misc:
                next_misc = now + 0.5
                if c.loop_misc() != mqtt.MQTT_ERR_SUCCESS:
                    return

    def set_filters(self, filters: list[str]) -> None:
        """Subscribe to ``filters`` from now on (event loop; paho queues the packets and
        the network thread writes them). Re-applied on every reconnect."""
        wanted = [f"$share/{self._share}/{f}" if self._share else f for f in filters]
        old, self._filters = self._filters, wanted
        if not self.connected:
            return
        added = [f for f in wanted if f not in old]
        dropped = [f for f in old if f not in wanted]
        if added:
            self.client.subscribe([(f, self._qos) for f in added])
        if dropped:
            self.client.unsubscribe(dropped)

    def pause_reading(self) -> None:
        """Stop taking messages (unread QoS-1 ones stay un-acknowledged: the broker keeps
        them for the next session) while publishes keep flowing."""
        self.reading = False
        self._want_write(None, None, None)

    def flushed(self) -> bool:
        return not self.client.wants_write()

    def publish(self, topic: str, payload: str | bytes, qos: int = 0, retain: bool = False) -> None:
        """Thread-safe; queued by paho and written by the network thread."""
        self.client.publish(topic, payload, qos, retain)

    def publish_many(self, messages: list[tuple[str, str]], qos: int = 0) -> None:
        """Thread-safe. QoS 0: encoded here into one buffer of frames and written by the
        network thread in large writes; higher QoS goes through paho one by one."""
        if qos:
            for topic, payload in messages:
                self.client.publish(topic, payload, qos)
            return
        if not self.connected:
            self.dropped_offline += len(messages)
            return
        if (
            self.client.queue_raw(self._encoder.encode(messages))
            and threading.get_ident() != self._thread.ident
        ):
            self._want_write(None, None, None)

    def publish_json(self, topic: str, obj: Any, qos: int = 1, retain: bool = False) -> None:
        self.publish(topic, json.dumps(obj), qos, retain)

    @property
    def started(self) -> bool:
        return self._thread.ident is not None

    def stop(self, timeout: float = 3.0) -> None:
        """Idempotent; safe on a link whose thread never started (a failed agent start)."""
        self._stop.set()
        self._want_write(None, None, None)
        if self.started:
            self._thread.join(timeout)
        self._wake_r.close()
        self._wake_w.close()
