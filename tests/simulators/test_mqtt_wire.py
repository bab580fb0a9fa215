"""Pre-encoded frames against a real mosquitto: delivered intact, QoS 1 acked."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time

import pytest

from bus.broker import BrokerUrl, make_client
from simulators.mqtt_wire import (
    AsyncWirePublisher,
    PacketIds,
    WireError,
    WirePublisher,
    connect_frame,
    publish_frame,
)


def test_connect_frame_layout() -> None:
    frame = connect_frame("c1", keepalive=30)
    assert frame == b"\x10\x0e\x00\x04MQTT\x04\x02\x00\x1e\x00\x02c1"


def test_packet_ids_wrap_and_skip_zero() -> None:
    ids = PacketIds()
    seen = [ids() for _ in range(65536)]
    assert seen[0] == 1 and seen[65534] == 65535 and seen[65535] == 1


class _Sink:
    def __init__(self, port: int, topic: str) -> None:
        self.got: list[tuple[str, bytes]] = []
        self.ready = threading.Event()
        self.client = make_client(BrokerUrl("127.0.0.1", port, False), f"sink-{topic[:20]}")
        self.client.on_connect = lambda c, *a: c.subscribe(topic, qos=1)
        self.client.on_subscribe = lambda *a: self.ready.set()
        self.client.on_message = lambda c, u, m: self.got.append((m.topic, m.payload))
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert self.ready.wait(5)

    def wait(self, n: int, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.got) < n and time.monotonic() < deadline:
            time.sleep(0.01)

    def stop(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def _payload(i: int) -> bytes:
    # A payload larger than 127 bytes exercises the 2-byte remaining length too.
    return json.dumps({"ts": time.time(), "seq": i, "values": [i * 0.5] * (1 + i % 40)}).encode()


def test_sync_publisher_delivers_qos0_and_qos1_intact(mosquitto, topic_prefix: str) -> None:
    sink = _Sink(mosquitto.port, f"{topic_prefix}/#")
    ids = PacketIds()
    expected = []
    frames = []
    for i in range(3000):
        topic = f"{topic_prefix}/dev{i % 7}/s"
        payload = _payload(i)
        expected.append((topic, payload))
        qos = i % 2
        frames.append(publish_frame(topic, payload, qos=qos, packet_id=ids() if qos else None))
    with WirePublisher("127.0.0.1", mosquitto.port, f"pub-{topic_prefix}") as pub:
        for start in range(0, len(frames), 500):
            pub.send(frames[start : start + 500])
        assert pub.wait_pubacks(1500), pub.pubacks
    sink.wait(len(expected))
    sink.stop()
    assert sorted(sink.got) == sorted(expected)
    # Per-topic order is preserved by MQTT for one publisher.
    for dev in range(7):
        t = f"{topic_prefix}/dev{dev}/s"
        assert [p for tp, p in sink.got if tp == t] == [p for tp, p in expected if tp == t]


async def test_async_publisher_delivers_to_mosquitto_sub(mosquitto, topic_prefix: str) -> None:
    sink = _Sink(mosquitto.port, f"{topic_prefix}/#")
    pub = AsyncWirePublisher("127.0.0.1", mosquitto.port, f"apub-{topic_prefix}")
    await pub.connect()
    ids = PacketIds()
    frames = [
        publish_frame(f"{topic_prefix}/x", b"%d" % i, qos=1, packet_id=ids()) for i in range(1000)
    ]
    await pub.send(frames)
    async with asyncio.timeout(10):
        await pub.wait_pubacks(1000)
    await pub.close()
    sink.wait(1000)
    sink.stop()
    assert [p for _, p in sink.got] == [b"%d" % i for i in range(1000)]


def test_refused_connect_raises_wire_error() -> None:
    # A real listener that answers CONNACK "not authorized" (return code 5).
    with socket.create_server(("127.0.0.1", 0)) as srv:
        port = srv.getsockname()[1]

        def answer() -> None:
            conn, _ = srv.accept()
            with conn:
                conn.recv(1024)
                conn.sendall(b"\x20\x02\x00\x05")
                time.sleep(0.2)

        t = threading.Thread(target=answer)
        t.start()
        with pytest.raises(WireError, match="return code 5"):
            WirePublisher("127.0.0.1", port, "refused").connect()
        t.join()
