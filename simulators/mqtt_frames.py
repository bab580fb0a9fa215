"""MQTT 3.1.1 packets for the load generators: CONNECT, PUBLISH, replies.

Varints and PUBLISH encoding are shared with the edge agent (:mod:`bus.frames`).

Only what a publisher needs; the broker's replies are split into packets by
:class:`ReplyParser`, which counts PUBACKs and records the CONNACK code.
"""

from __future__ import annotations

from bus.frames import (
    PUBLISH,
    decode_remaining_length,
    encode_remaining_length,
    publish_frame,
    utf8_field,
)
from models.errors import EdgecloudError, Unavailable

__all__ = [
    "CONNACK",
    "CONNECT",
    "DISCONNECT_FRAME",
    "PINGREQ_FRAME",
    "PUBACK",
    "PUBLISH",
    "PacketIds",
    "ReplyParser",
    "WireError",
    "check_connack",
    "connect_frame",
    "decode_remaining_length",
    "encode_remaining_length",
    "publish_frame",
]

CONNECT = 0x10
CONNACK = 0x20
PUBACK = 0x40
PINGREQ_FRAME = b"\xc0\x00"
DISCONNECT_FRAME = b"\xe0\x00"


class WireError(EdgecloudError):
    """The broker refused the connection or sent something unparseable."""


def connect_frame(
    client_id: str,
    *,
    keepalive: int = 60,
    clean_session: bool = True,
    username: str | None = None,
    password: str | None = None,
) -> bytes:
    """A CONNECT packet for protocol level 4 (MQTT 3.1.1)."""
    flags = 0x02 if clean_session else 0
    payload = utf8_field(client_id)
    if username is not None:
        flags |= 0x80
        payload += utf8_field(username)
        if password is not None:
            flags |= 0x40
            payload += utf8_field(password)
    var = utf8_field("MQTT") + bytes([4, flags]) + keepalive.to_bytes(2, "big")
    body = var + payload
    return bytes([CONNECT]) + encode_remaining_length(len(body)) + body


class PacketIds:
    """Cycles through 1..65535 (0 is not a valid packet id)."""

    def __init__(self) -> None:
        self._next = 0

    def __call__(self) -> int:
        self._next = self._next % 65535 + 1
        return self._next


class ReplyParser:
    """Splits the broker's byte stream into packets; counts PUBACKs."""

    def __init__(self) -> None:
        self.buf = bytearray()
        self.connack: int | None = None
        self.pubacks = 0
        self.other = 0

    def feed(self, data: bytes) -> None:
        self.buf += data
        n = len(self.buf)
        # Fast path for the common case (a run of 4-byte PUBACKs): counted in C, no loop.
        if n % 4 == 0 and self.buf[::4].count(PUBACK) * 4 == n and self.buf[1::4].count(2) * 4 == n:
            self.pubacks += n // 4
            self.buf.clear()
            return
        pos = 0
        while pos + 2 <= len(self.buf):
            try:
                rl = decode_remaining_length(self.buf, pos + 1)
            except ValueError as exc:
                raise WireError(str(exc)) from exc
            if rl is None:
                break
            length, used = rl
            end = pos + 1 + used + length
            if end > len(self.buf):
                break
            kind = self.buf[pos] & 0xF0
            if kind == PUBACK:
                self.pubacks += 1
            elif kind == CONNACK:
                self.connack = self.buf[pos + 1 + used + 1]
            else:
                self.other += 1
            pos = end
        del self.buf[:pos]


def check_connack(code: int | None) -> None:
    if code is None:
        raise Unavailable("broker closed the connection before CONNACK")
    if code != 0:
        raise WireError(f"broker refused CONNECT with return code {code}")
