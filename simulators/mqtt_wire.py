"""Pre-encoded MQTT 3.1.1 frames written straight to a TCP socket.

Why this exists: paho spends ~20-40 us of Python per publish (packet building, locks,
callbacks), so one process cannot drive thousands of sensors or saturate an edge agent.
Here a PUBLISH is encoded once into ``bytes``; sending is ``b"".join`` plus one
``sendall`` per tick, well under 2 us per message. Only what a load generator needs is
implemented: CONNECT, PUBLISH (QoS 0/1), PINGREQ, DISCONNECT; CONNACK is checked,
PUBACKs are counted, everything else the broker sends is read and ignored.
"""

from __future__ import annotations

import asyncio
import contextlib
import select
import socket
import threading
import time
from collections.abc import Iterable

from models.errors import Unavailable
from simulators.mqtt_frames import (
    CONNACK,
    CONNECT,
    DISCONNECT_FRAME,
    PINGREQ_FRAME,
    PUBACK,
    PUBLISH,
    PacketIds,
    ReplyParser,
    WireError,
    check_connack,
    connect_frame,
    decode_remaining_length,
    encode_remaining_length,
    publish_frame,
)

__all__ = [
    "CONNACK",
    "CONNECT",
    "DISCONNECT_FRAME",
    "PINGREQ_FRAME",
    "PUBACK",
    "PUBLISH",
    "AsyncWirePublisher",
    "PacketIds",
    "WireError",
    "WirePublisher",
    "connect_frame",
    "decode_remaining_length",
    "encode_remaining_length",
    "publish_frame",
]


class WirePublisher:
    """Blocking raw-socket publisher; a daemon thread reads and counts broker replies.

    ``send`` takes one frame, a list of frames or already-joined bytes; it is safe to
    call from one thread while the reader thread runs (the lock covers pings).
    """

    def __init__(self, host: str, port: int, client_id: str, *, keepalive: int = 60) -> None:
        self.host, self.port, self.client_id, self.keepalive = host, port, client_id, keepalive
        self._sock: socket.socket | None = None
        self._parser = ReplyParser()
        self._lock = threading.Lock()
        self._reader: threading.Thread | None = None
        self._last_send = time.monotonic()
        self.sent_bytes = 0

    def connect(self, timeout: float = 5.0) -> None:
        sock = socket.create_connection((self.host, self.port), timeout=timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
        sock.sendall(connect_frame(self.client_id, keepalive=self.keepalive))
        deadline = time.monotonic() + timeout
        while self._parser.connack is None and time.monotonic() < deadline:
            data = sock.recv(65536)
            if not data:
                break
            self._parser.feed(data)
        check_connack(self._parser.connack)
        # Blocking sends (a saturated broker stalls sendall instead of timing it out); the
        # reader thread waits with select() so it can still send keep-alive pings.
        sock.settimeout(None)
        self._sock = sock
        self._reader = threading.Thread(target=self._read_loop, name="mqtt-wire-rx", daemon=True)
        self._reader.start()

    @property
    def pubacks(self) -> int:
        return self._parser.pubacks

    def send(self, frames: bytes | Iterable[bytes]) -> None:
        data = frames if isinstance(frames, bytes | bytearray) else b"".join(frames)
        if self._sock is None:
            raise Unavailable("publisher is not connected")
        with self._lock:
            self._sock.sendall(data)
            self._last_send = time.monotonic()
        self.sent_bytes += len(data)

    def wait_pubacks(self, n: int, timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        while self._parser.pubacks < n and time.monotonic() < deadline:
            time.sleep(0.005)
        return self._parser.pubacks >= n

    def _read_loop(self) -> None:
        sock = self._sock
        while sock is not None and self._sock is sock:
            try:
                readable, _, _ = select.select([sock], [], [], 1.0)
                data = sock.recv(65536) if readable else None
            except (OSError, ValueError):  # ValueError: fd closed under select
                return
            if data == b"":
                return
            if data:
                self._parser.feed(data)
            if self.keepalive and time.monotonic() - self._last_send > self.keepalive / 2:
                with contextlib.suppress(OSError):
                    self.send(PINGREQ_FRAME)

    def close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is None:
            return
        with contextlib.suppress(OSError):
            with self._lock:
                sock.sendall(DISCONNECT_FRAME)
            sock.shutdown(socket.SHUT_RDWR)
        sock.close()
        if self._reader is not None:
            self._reader.join(2.0)

    def __enter__(self) -> WirePublisher:
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncWirePublisher:
    """asyncio twin of :class:`WirePublisher` for the fleet simulator's event loop."""

    def __init__(self, host: str, port: int, client_id: str, *, keepalive: int = 60) -> None:
        self.host, self.port, self.client_id, self.keepalive = host, port, client_id, keepalive
        self._parser = ReplyParser()
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._ping_task: asyncio.Task[None] | None = None
        self._last_send = time.monotonic()
        self._progress = asyncio.Event()
        self.sent_bytes = 0

    @property
    def pubacks(self) -> int:
        return self._parser.pubacks

    @property
    def connected(self) -> bool:
        return self._writer is not None and not self._writer.is_closing()

    async def connect(self, connect_timeout_s: float = 5.0) -> None:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(self.host, self.port), connect_timeout_s
        )
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        writer.transport.set_write_buffer_limits(high=8 << 20)
        writer.write(connect_frame(self.client_id, keepalive=self.keepalive))
        async with asyncio.timeout(connect_timeout_s):
            while self._parser.connack is None:
                data = await reader.read(65536)
                if not data:
                    break
                self._parser.feed(data)
        check_connack(self._parser.connack)
        self._writer = writer
        self._reader_task = asyncio.create_task(self._read_loop(reader), name="mqtt-wire-rx")
        self._ping_task = asyncio.create_task(self._ping_loop(), name="mqtt-wire-ping")

    async def send(self, frames: bytes | Iterable[bytes]) -> None:
        """Write and wait for the transport buffer to drain below its high-water mark."""
        if self._writer is None:
            raise Unavailable("publisher is not connected")
        data = frames if isinstance(frames, bytes | bytearray) else b"".join(frames)
        self._writer.write(data)
        self._last_send = time.monotonic()
        self.sent_bytes += len(data)
        await self._writer.drain()

    async def wait_pubacks(self, n: int) -> None:
        """Until ``n`` PUBACKs arrived in total; wrap in ``asyncio.timeout`` to bound it."""
        while self._parser.pubacks < n:
            if self._reader_task is None or self._reader_task.done():
                raise Unavailable(f"connection closed after {self._parser.pubacks}/{n} PUBACKs")
            self._progress.clear()
            await self._progress.wait()

    async def _read_loop(self, reader: asyncio.StreamReader) -> None:
        # A plain read: wrapping it in wait_for (for keep-alive timing) can swallow a
        # cancellation on Python 3.11, which hung close(); pings have their own task.
        try:
            while data := await reader.read(65536):
                self._parser.feed(data)
                self._progress.set()
        except OSError:
            pass
        finally:
            self._progress.set()

    async def _ping_loop(self) -> None:
        while self._writer is not None and self.keepalive:
            await asyncio.sleep(self.keepalive / 4)
            idle = time.monotonic() - self._last_send
            if self._writer is not None and idle > self.keepalive / 2:
                self._writer.write(PINGREQ_FRAME)
                self._last_send = time.monotonic()

    async def close(self) -> None:
        writer, self._writer = self._writer, None
        if self._ping_task is not None:
            self._ping_task.cancel()
        if writer is not None:
            with contextlib.suppress(OSError, ConnectionError, TimeoutError):
                writer.write(DISCONNECT_FRAME)
                await asyncio.wait_for(writer.drain(), 5.0)
            writer.close()
            with contextlib.suppress(OSError, ConnectionError, TimeoutError):
                await asyncio.wait_for(writer.wait_closed(), 5.0)
        if self._reader_task is not None:
            # Closing the socket ends the read loop with EOF; cancel only as a backstop.
            done, _ = await asyncio.wait([self._reader_task], timeout=2.0)
            if not done:
                self._reader_task.cancel()
