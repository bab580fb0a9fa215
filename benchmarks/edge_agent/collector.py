"""Result collector: subscribes to ``results/#`` and measures publish -> result latency.

A raw-socket MQTT subscriber (one ``recv()`` of up to 256 KiB, packets split by
:func:`bus.frames.split_publishes`) instead of paho: at 30,000 results/s a paho
subscriber with ``json.loads`` took ~55 % of a core on this 2-core machine, CPU the
agents under test then lacked. The measuring side must not be what limits the rate; it
costs the naive agent and the edge agent the same. Receive time is taken once per
``recv()``: every result in one read arrived together.
"""

from __future__ import annotations

import json
import socket
import threading
import time

import numpy as np

from bus.frames import (
    decode_remaining_length,
    encode_remaining_length,
    split_publishes,
    utf8_field,
)
from simulators.mqtt_frames import CONNACK, check_connack, connect_frame

SUBACK = 0x90


def subscribe_frame(topic: str, qos: int = 0, packet_id: int = 1) -> bytes:
    body = packet_id.to_bytes(2, "big") + utf8_field(topic) + bytes([qos])
    return b"\x82" + encode_remaining_length(len(body)) + body


def _skip_other(buf: bytes) -> bytes:
    """Drop complete non-PUBLISH packets at the head (the broker sends none we need)."""
    while len(buf) >= 2 and buf[0] & 0xF0 != 0x30:
        dec = decode_remaining_length(buf, 1)
        if dec is None or 1 + dec[1] + dec[0] > len(buf):
            break
        buf = buf[1 + dec[1] + dec[0] :]
    return buf


class Collector:
    """Counts unique (device, seq) results; latency = receive time - the reading's ``ts``."""

    def __init__(self, port: int, topic: str = "results/#") -> None:
        self._port = port
        self._topic = topic
        self._sock: socket.socket | None = None
        self._seen: set[tuple[str, int]] = set()
        self._lat: list[float] = []
        self._bad = 0
        self._now = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="collector", daemon=True)

    def _deliver(self, topic: str, payload: bytes) -> None:
        try:
            d = json.loads(payload)
            self._seen.add((d["device"], d["seq"]))
            self._lat.append(self._now - d["ts"])
        except (ValueError, KeyError, TypeError):
            self._bad += 1

    def start(self) -> None:
        sock = socket.create_connection(("127.0.0.1", self._port), timeout=5.0)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(connect_frame(f"collector-{time.monotonic_ns()}", keepalive=0))
        head = sock.recv(4)
        check_connack(head[3] if len(head) == 4 and head[0] == CONNACK else None)
        sock.sendall(subscribe_frame(self._topic))
        ack = sock.recv(5)
        if len(ack) != 5 or ack[0] != SUBACK or ack[4] & 0x80:
            raise RuntimeError(f"collector subscription refused: {ack!r}")
        sock.settimeout(0.2)
        self._sock = sock
        self._thread.start()

    def _run(self) -> None:
        assert self._sock is not None
        buf = b""
        while not self._stop.is_set():
            try:
                data = self._sock.recv(262144)
            except TimeoutError:
                continue
            except OSError:
                return
            if not data:
                return
            self._now = time.time()
            buf = buf + data if buf else data
            off, _ = split_publishes(buf, 0, 1 << 30, self._deliver)
            buf = _skip_other(buf[off:])

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
        self._stop.set()
        if self._sock is not None:
            self._thread.join(2.0)
            self._sock.close()
