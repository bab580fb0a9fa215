"""One MQTT 3.1.1 client session as an asyncio protocol: no thread, no task per client.

The fleet simulator runs thousands of these in one event loop. Each is a real session of
its own (own client id, own last will, own subscriptions), because that is what the
broker and the gateway see from a real agent: multiplexing simulated agents over one
connection would hide exactly the per-session cost being measured. paho would need a
thread per client; here a session is a socket, a receive buffer and a few callbacks.

Implemented: CONNECT (clean session, will QoS 1 retained), SUBSCRIBE, PUBLISH QoS 0/1
out (PUBACKs counted, not tracked), PUBLISH QoS 0/1 in (QoS 1 acknowledged after the
callback), PINGREQ. The frames come from :mod:`simulators.mqtt_frames`/:mod:`bus.frames`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from bus.frames import puback_frame
from simulators.mqtt_frames import (
    CONNACK,
    DISCONNECT_FRAME,
    PINGREQ_FRAME,
    PUBACK,
    PUBLISH,
    PacketIds,
    WireError,
    check_connack,
    decode_remaining_length,
    encode_remaining_length,
    publish_frame,
)

SUBSCRIBE = 0x82
SUBACK = 0x90


def _field(raw: bytes) -> bytes:
    return len(raw).to_bytes(2, "big") + raw


def connect_with_will(
    client_id: str, will_topic: str, will_payload: bytes, *, keepalive: int = 60
) -> bytes:
    """CONNECT (clean session) with a QoS-1 retained last will, as the edge agent sends."""
    flags = 0x02 | 0x04 | 0x08 | 0x20  # clean, will, will QoS 1, will retain
    var = _field(b"MQTT") + bytes([4, flags]) + keepalive.to_bytes(2, "big")
    body = var + _field(client_id.encode()) + _field(will_topic.encode()) + _field(will_payload)
    return bytes([0x10]) + encode_remaining_length(len(body)) + body


def subscribe_frame(packet_id: int, filters: list[str], qos: int = 1) -> bytes:
    body = packet_id.to_bytes(2, "big")
    for f in filters:
        body += _field(f.encode()) + bytes([qos])
    return bytes([SUBSCRIBE]) + encode_remaining_length(len(body)) + body


class Session(asyncio.Protocol):
    """A connected MQTT session; ``on_message(topic, payload)`` runs on the loop."""

    def __init__(
        self,
        client_id: str,
        will: tuple[str, bytes],
        subscriptions: list[str],
        on_message: Callable[[str, bytes], None],
        *,
        keepalive: int = 60,
    ) -> None:
        self.client_id = client_id
        self._will = will
        self._subs = subscriptions
        self._on_message = on_message
        self._keepalive = keepalive
        self._buf = bytearray()
        self._ids = PacketIds()
        self._transport: asyncio.Transport | None = None
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.pubacks = 0
        self.received = 0
        self.sent_bytes = 0

    # -- asyncio.Protocol ------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        topic, payload = self._will
        transport.write(
            connect_with_will(self.client_id, topic, payload, keepalive=self._keepalive)
        )

    def data_received(self, data: bytes) -> None:
        self._buf += data
        buf = self._buf
        pos = 0
        try:
            while pos + 2 <= len(buf):
                dec = decode_remaining_length(buf, pos + 1)
                if dec is None:
                    break
                length, used = dec
                start = pos + 1 + used
                end = start + length
                if end > len(buf):
                    break
                self._packet(buf[pos], bytes(buf[start:end]))
                pos = end
        except (ValueError, WireError) as exc:
            self._fail(WireError(f"{self.client_id}: {exc}"))
            return
        del buf[:pos]

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        if not self.ready.done():
            self.ready.set_exception(WireError(f"{self.client_id}: closed before CONNACK"))
        if not self.closed.done():
            self.closed.set_result(None)

    # -- packets ---------------------------------------------------------------------------
    def _packet(self, first: int, body: bytes) -> None:
        kind = first & 0xF0
        if kind == PUBLISH:
            qos = (first >> 1) & 0x03
            tlen = int.from_bytes(body[:2], "big")
            topic = body[2 : 2 + tlen].decode("utf-8", "replace")
            head = 2 + tlen + (2 if qos else 0)
            self.received += 1
            self._on_message(topic, body[head:])
            if qos == 1 and self._transport is not None:
                self._transport.write(puback_frame(int.from_bytes(body[head - 2 : head], "big")))
        elif kind == PUBACK:
            self.pubacks += 1
        elif kind == CONNACK:
            check_connack(body[1])
            if self._subs and self._transport is not None:
                self._transport.write(subscribe_frame(self._ids(), self._subs))
            else:
                self.ready.set_result(None)
        elif kind == SUBACK:
            if any(code == 0x80 for code in body[2:]):
                raise WireError(f"broker refused a subscription of {self.client_id}")
            if not self.ready.done():
                self.ready.set_result(None)
        # PINGRESP and anything else: nothing to do

    def _fail(self, exc: Exception) -> None:
        if not self.ready.done():
            self.ready.set_exception(exc)
        if self._transport is not None:
            self._transport.abort()

    # -- sending ---------------------------------------------------------------------------
    @property
    def connected(self) -> bool:
        return self._transport is not None and not self._transport.is_closing()

    def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> bool:
        """Queue one PUBLISH; False when the session is gone (the caller counts it)."""
        if self._transport is None or self._transport.is_closing():
            return False
        frame = publish_frame(
            topic, payload, qos=qos, retain=retain, packet_id=self._ids() if qos else None
        )
        self._transport.write(frame)
        self.sent_bytes += len(frame)
        return True

    def ping(self) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(PINGREQ_FRAME)

    def close(self) -> None:
        """Clean DISCONNECT: the broker discards the will."""
        if self._transport is not None:
            with contextlib.suppress(OSError, RuntimeError):
                self._transport.write(DISCONNECT_FRAME)
            self._transport.close()

    def abort(self) -> None:
        """Drop the TCP connection without DISCONNECT: the broker publishes the will."""
        if self._transport is not None:
            self._transport.abort()


async def open_session(
    host: str,
    port: int,
    client_id: str,
    will: tuple[str, bytes],
    subscriptions: list[str],
    on_message: Callable[[str, bytes], None],
    *,
    keepalive: int = 60,
    timeout_s: float = 10.0,
) -> Session:
    """Connect, subscribe, and return the session once the SUBACK arrived."""
    loop = asyncio.get_running_loop()
    _, proto = await asyncio.wait_for(
        loop.create_connection(
            lambda: Session(client_id, will, subscriptions, on_message, keepalive=keepalive),
            host,
            port,
        ),
        timeout_s,
    )
    try:
        await asyncio.wait_for(asyncio.shield(proto.ready), timeout_s)
    except BaseException:
        proto.abort()
        raise
    return proto
