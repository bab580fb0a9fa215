"""MQTT 3.1.1 packet encoding for the load generators: CONNECT, PUBLISH, varints, replies.

Only what a publisher needs; the broker's replies are split into packets by
:class:`ReplyParser`, which counts PUBACKs and records the CONNACK code.
"""

from __future__ import annotations

from models.errors import EdgecloudError, Unavailable

CONNECT = 0x10
CONNACK = 0x20
PUBLISH = 0x30
PUBACK = 0x40
PINGREQ_FRAME = b"\xc0\x00"
DISCONNECT_FRAME = b"\xe0\x00"
_MAX_REMAINING = 268_435_455


class WireError(EdgecloudError):
    """The broker refused the connection or sent something unparseable."""


def encode_remaining_length(n: int) -> bytes:
    """MQTT variable-length integer (1-4 bytes, 7 bits each, MSB = continuation)."""
    if not 0 <= n <= _MAX_REMAINING:
        raise ValueError(f"remaining length {n} out of range")
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | 0x80 if n else byte)
        if not n:
            return bytes(out)


def decode_remaining_length(buf: bytes | bytearray, start: int) -> tuple[int, int] | None:
    """(value, bytes used) of the varint at ``buf[start:]``, or None if incomplete."""
    value, mult = 0, 1
    for i in range(4):
        if start + i >= len(buf):
            return None
        byte = buf[start + i]
        value += (byte & 0x7F) * mult
        if not byte & 0x80:
            return value, i + 1
        mult *= 128
    raise WireError("malformed remaining length")


def _utf8(s: str | bytes) -> bytes:
    raw = s.encode() if isinstance(s, str) else s
    if len(raw) > 65535:
        raise ValueError("MQTT strings are limited to 65535 bytes")
    return len(raw).to_bytes(2, "big") + raw


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
    payload = _utf8(client_id)
    if username is not None:
        flags |= 0x80
        payload += _utf8(username)
        if password is not None:
            flags |= 0x40
            payload += _utf8(password)
    var = _utf8("MQTT") + bytes([4, flags]) + keepalive.to_bytes(2, "big")
    body = var + payload
    return bytes([CONNECT]) + encode_remaining_length(len(body)) + body


def publish_frame(
    topic: str | bytes,
    payload: bytes,
    *,
    qos: int = 0,
    packet_id: int | None = None,
    retain: bool = False,
) -> bytes:
    """A complete PUBLISH packet; QoS 1 needs a packet id in 1..65535."""
    if qos not in (0, 1):
        raise ValueError("only QoS 0 and 1 are supported")
    header = PUBLISH | (qos << 1) | (1 if retain else 0)
    var = _utf8(topic)
    if qos:
        if packet_id is None or not 1 <= packet_id <= 65535:
            raise ValueError("QoS 1 needs a packet id in 1..65535")
        var += packet_id.to_bytes(2, "big")
    return bytes([header]) + encode_remaining_length(len(var) + len(payload)) + var + payload


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
            rl = decode_remaining_length(self.buf, pos + 1)
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
