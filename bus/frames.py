"""MQTT 3.1.1 wire format for the hot paths that bypass paho's per-packet machinery.

paho builds a ``MQTTMessageInfo`` (with a ``threading.Condition``), queues a dict and
pokes a socket pair for every publish, and reads every packet with several small
``recv()`` calls into a fresh ``MQTTMessage``; at tens of thousands of messages/s that
is most of an agent's CPU. These helpers encode QoS-0 PUBLISH packets as plain bytes
(many per ``send()``) and split a received buffer into QoS-0 PUBLISH packets. The edge
agent, the simulators' raw publisher and the benchmark collector share them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

PUBLISH = 0x30
_MAX_REMAINING = 268_435_455


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
    """(value, bytes used) of the varint at ``buf[start:]``, or None if incomplete.

    Raises ValueError for a varint longer than 4 bytes (a corrupt stream).
    """
    value, mult = 0, 1
    for i in range(4):
        if start + i >= len(buf):
            return None
        byte = buf[start + i]
        value += (byte & 0x7F) * mult
        if not byte & 0x80:
            return value, i + 1
        mult *= 128
    raise ValueError("malformed remaining length")


def utf8_field(s: str | bytes) -> bytes:
    """A length-prefixed MQTT string."""
    raw = s.encode() if isinstance(s, str) else s
    if len(raw) > 65535:
        raise ValueError("MQTT strings are limited to 65535 bytes")
    return len(raw).to_bytes(2, "big") + raw


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
    var = utf8_field(topic)
    if qos:
        if packet_id is None or not 1 <= packet_id <= 65535:
            raise ValueError("QoS 1 needs a packet id in 1..65535")
        var += packet_id.to_bytes(2, "big")
    return bytes([header]) + encode_remaining_length(len(var) + len(payload)) + var + payload


class FrameEncoder:
    """Encodes many QoS-0 PUBLISH packets into one buffer, caching topic fields.

    The cache is bounded (``max_topics``): results go to one topic per stream, so a
    fleet's worth of topics stays cached and a topic storm only costs re-encoding.
    """

    def __init__(self, max_topics: int = 100_000) -> None:
        self._topics: dict[str, bytes] = {}
        self._max = max_topics

    def topic_field(self, topic: str) -> bytes:
        field = self._topics.get(topic)
        if field is None:
            field = utf8_field(topic)
            if len(self._topics) >= self._max:
                self._topics.clear()
            self._topics[topic] = field
        return field

    def encode(self, messages: Sequence[tuple[str, str | bytes]]) -> bytes:
        parts: list[bytes] = []
        append = parts.append
        for topic, body in messages:
            field = self.topic_field(topic)
            raw = body.encode() if isinstance(body, str) else body
            n = len(field) + len(raw)
            if n < 128:
                append(bytes((PUBLISH, n)))
            elif n < 16384:
                append(bytes((PUBLISH, (n & 0x7F) | 0x80, n >> 7)))
            else:
                append(bytes((PUBLISH,)) + encode_remaining_length(n))
            append(field)
            append(raw)
        return b"".join(parts)


def puback_frame(packet_id: int) -> bytes:
    return b"\x40\x02" + packet_id.to_bytes(2, "big")


def split_publishes(
    buf: bytes,
    off: int,
    limit: int,
    deliver: Callable[[str, bytes], None],
    deliver_acked: Callable[[str, bytes, int], None] | None = None,
) -> tuple[int, int]:
    """Deliver the complete PUBLISH packets at ``buf[off:]`` (at most ``limit``).

    QoS 0 goes to ``deliver(topic, payload)``; QoS 1 to ``deliver_acked(topic, payload,
    packet_id)`` when given (the caller owes the broker a PUBACK for it). Returns (new
    offset, packets delivered). Stops at the first packet it does not take (QoS 1
    without ``deliver_acked``, QoS 2, acks, pings: the MQTT client's) or that is
    incomplete, so the caller can hand the rest to a full client.
    """
    n = len(buf)
    count = 0
    while count < limit and off + 2 <= n:
        b0 = buf[off]
        qos1 = b0 & 0xF6 == PUBLISH | 0x02
        if b0 & 0xF6 != PUBLISH and not (qos1 and deliver_acked is not None):
            break  # type 3 with QoS bits 0 (or 1) taken; dup/retain bits allowed
        rl = buf[off + 1]
        start = off + 2
        if rl & 0x80:
            dec = decode_remaining_length(buf, off + 1)
            if dec is None:
                break
            rl, used = dec
            start = off + 1 + used
        end = start + rl
        if end > n or rl < 2:
            break
        tlen = (buf[start] << 8) | buf[start + 1]
        head = 2 + tlen + (2 if qos1 else 0)
        if head > rl:
            break  # malformed; let the full client report it
        topic = buf[start + 2 : start + 2 + tlen].decode("utf-8", "replace")
        if qos1:
            pid = (buf[start + head - 2] << 8) | buf[start + head - 1]
            deliver_acked(topic, buf[start + head : end], pid)  # type: ignore[misc]
        else:
            deliver(topic, buf[start + head : end])
        off = end
        count += 1
    return off, count
