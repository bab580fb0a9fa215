"""The shared MQTT wire helpers: varints, PUBLISH encoding, splitting received buffers."""

from __future__ import annotations

import pytest

from bus.frames import (
    FrameEncoder,
    decode_remaining_length,
    encode_remaining_length,
    publish_frame,
    split_publishes,
)


@pytest.mark.parametrize(
    ("n", "encoded"),
    [
        (0, b"\x00"),
        (127, b"\x7f"),
        (128, b"\x80\x01"),
        (16383, b"\xff\x7f"),
        (16384, b"\x80\x80\x01"),
        (2097151, b"\xff\xff\x7f"),
        (268435455, b"\xff\xff\xff\x7f"),
    ],
)
def test_remaining_length_round_trip(n: int, encoded: bytes) -> None:
    assert encode_remaining_length(n) == encoded
    assert decode_remaining_length(b"\x30" + encoded, 1) == (n, len(encoded))


def test_remaining_length_errors() -> None:
    with pytest.raises(ValueError):
        encode_remaining_length(268435456)
    with pytest.raises(ValueError, match="malformed"):
        decode_remaining_length(b"\xff\xff\xff\xff\x01", 0)
    assert decode_remaining_length(b"\x80", 0) is None  # incomplete


def test_publish_frame_layout() -> None:
    frame = publish_frame("a/b", b"xyz", qos=1, packet_id=258)
    assert frame == b"\x32\x0a\x00\x03a/b\x01\x02xyz"
    assert publish_frame("a/b", b"", retain=True) == b"\x31\x05\x00\x03a/b"
    with pytest.raises(ValueError):
        publish_frame("a", b"", qos=1)
    with pytest.raises(ValueError):
        publish_frame("a", b"", qos=2, packet_id=1)


@pytest.mark.parametrize("size", [0, 1, 100, 122, 123, 124, 16000, 16379, 16380, 70000])
def test_frame_encoder_matches_publish_frame(size: int) -> None:
    body = bytes(range(256)) * (size // 256) + bytes(range(size % 256))
    topic = "results/site/dev/imu"
    enc = FrameEncoder()
    assert enc.encode([(topic, body)]) == publish_frame(topic, body)
    text = "é" * (size // 2)  # str bodies are UTF-8 encoded
    assert enc.encode([(topic, text)]) == publish_frame(topic, text.encode())


def test_frame_encoder_batches_and_bounds_its_topic_cache() -> None:
    enc = FrameEncoder(max_topics=2)
    msgs = [(f"r/{i % 3}", f"m{i}") for i in range(9)]
    assert enc.encode(msgs) == b"".join(publish_frame(t, p.encode()) for t, p in msgs)
    assert len(enc._topics) <= 2


def test_split_publishes_stops_at_incomplete_and_foreign_packets() -> None:
    frames = [publish_frame(f"a/{i}", b"x" * (i * 50)) for i in range(5)]
    buf = b"".join(frames)
    got: list[tuple[str, bytes]] = []
    off, n = split_publishes(buf, 0, 100, lambda t, p: got.append((t, p)))
    assert (off, n) == (len(buf), 5)
    assert got == [(f"a/{i}", b"x" * (i * 50)) for i in range(5)]

    got.clear()
    off, n = split_publishes(buf[:-3], 0, 100, lambda t, p: got.append((t, p)))
    assert n == 4 and off == len(buf) - len(frames[-1])  # the cut packet stays

    qos1 = publish_frame("q/1", b"ack me", qos=1, packet_id=7)
    mixed = frames[0] + qos1 + frames[1]
    got.clear()
    off, n = split_publishes(mixed, 0, 100, lambda t, p: got.append((t, p)))
    assert n == 1 and off == len(frames[0])  # QoS 1 is left to the full client

    got.clear()
    off, n = split_publishes(buf, 0, 2, lambda t, p: got.append((t, p)))
    assert n == 2 and off == len(frames[0]) + len(frames[1])  # the limit holds

    pingresp = b"\xd0\x00"
    assert split_publishes(pingresp + frames[0], 0, 10, lambda t, p: None) == (0, 0)


def test_split_publishes_leaves_a_malformed_topic_length_to_the_full_client() -> None:
    bad = b"\x30\x04\x00\x09ab"  # topic length 9 in a 4-byte body
    assert split_publishes(bad, 0, 10, lambda t, p: None) == (0, 0)
