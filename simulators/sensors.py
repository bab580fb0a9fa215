"""Virtual sensors: thousands of asyncio-driven streams over a few raw MQTT sockets.

Rate control is per tick, not per sensor: every tick the fleet integrates
``rate_hz * shape.factor(t)`` into a cumulative count ``C`` and sensor ``k`` (with a
fixed phase ``phi_k``) has sent ``floor(C + phi_k)`` readings by then. That is exact
on average, spreads sensors evenly within a period, costs one numpy op per tick and
catches up after a late tick instead of drifting.

``start_spread_s`` additionally starts each stream at a random moment within that many
seconds. Without it every stream's n-th reading goes out within the same reading
period, so all streams complete a window (every ``hop`` readings) in lockstep and an
agent sees its whole fleet's windows as one clump per hop instead of a steady flow -
a synchronisation real fleets do not have, and one that turns a comfortable average
load into a periodic overload of the edge device.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from bus.topics import StreamId, Topics
from simulators.mqtt_wire import AsyncWirePublisher, PacketIds, encode_remaining_length
from simulators.payloads import PayloadSource
from simulators.shapes import Shape, Steady


def make_streams(count: int, sites: Sequence[str], stream: str = "imu") -> list[StreamId]:
    """``count`` streams dealt round-robin over ``sites`` (device ids ``dev00000``...)."""
    return [StreamId(sites[i % len(sites)], f"dev{i:05d}", stream) for i in range(count)]


@dataclass
class FleetStats:
    """What the fleet actually published: per-stream counts and a per-second series."""

    sent: dict[str, int] = field(default_factory=dict)
    per_second: list[int] = field(default_factory=list)
    bytes_sent: int = 0
    late_ticks: int = 0
    started_at: float = 0.0

    @property
    def total(self) -> int:
        return sum(self.sent.values())


class SensorFleet:
    """Publishes JSON readings ``{"ts","seq","values"}`` for many streams.

    ``seq`` starts at 0 per stream and increases by one per reading; ``ts`` is the unix
    time at encoding, i.e. the publish time that starts the latency clock. With
    ``rows_per_message`` > 1 a stream holds its readings back until it has that many
    and sends them as one multi-row message (``values`` a list of rows, ``seq`` the last
    row's), like a sensor that buffers samples; readings still held at the end are not
    sent (nor counted).
    """

    def __init__(
        self,
        host: str,
        port: int,
        streams: Sequence[StreamId],
        source: PayloadSource,
        *,
        rate_hz: float,
        shape: Shape | None = None,
        qos: int = 0,
        connections: int = 2,
        tick_s: float = 0.01,
        topics: Topics | None = None,
        client_prefix: str = "fleet-sim",
        seed: int = 0,
        start_spread_s: float = 0.0,
        rows_per_message: int = 1,
    ) -> None:
        if rows_per_message < 1:
            raise ValueError("rows_per_message must be >= 1")
        self.rows = rows_per_message
        if rate_hz <= 0:
            raise ValueError("rate_hz must be positive")
        if start_spread_s < 0:
            raise ValueError("start_spread_s must be >= 0")
        self.streams = list(streams)
        self.source = source
        self.rate_hz = rate_hz
        self.shape: Shape = shape or Steady()
        self.qos = qos
        self.tick_s = tick_s
        topics = topics or Topics()
        self._topics = [
            len(t).to_bytes(2, "big") + t for t in (topics.sensor(s).encode() for s in self.streams)
        ]
        self._header = bytes([0x30 | (qos << 1)])
        rng = np.random.default_rng(seed)
        self._phase = rng.random(len(self.streams))
        # A late start is a negative phase (in readings at the base rate): the stream's
        # count stays at 0 until the fleet's cumulative count C passes its offset.
        self._phase -= rng.random(len(self.streams)) * start_spread_s * rate_hz
        self._sent = np.zeros(len(self.streams), dtype=np.int64)
        self._conn_of = [i % connections for i in range(len(self.streams))]
        self._pubs = [
            AsyncWirePublisher(host, port, f"{client_prefix}-{i}") for i in range(connections)
        ]
        self._ids = [PacketIds() for _ in range(connections)]
        self.stats = FleetStats()
        self.paused = False

    async def connect(self) -> None:
        await asyncio.gather(*(p.connect() for p in self._pubs))

    async def close(self) -> None:
        await asyncio.gather(*(p.close() for p in self._pubs))

    @property
    def pubacks(self) -> int:
        return sum(p.pubacks for p in self._pubs)

    def _frame(self, i: int, seq: int, ts: float, conn: int) -> bytes:
        """One message ending at reading ``seq`` (``self.rows`` readings)."""
        if self.rows == 1:
            values = self.source.row(i, seq)
        else:
            rows = (self.source.row(i, s) for s in range(seq - self.rows + 1, seq + 1))
            values = b"[" + b",".join(rows) + b"]"
        payload = b'{"ts":%.6f,"seq":%d,"values":%s}' % (ts, seq, values)
        topic = self._topics[i]
        var = topic + self._ids[conn]().to_bytes(2, "big") if self.qos else topic
        return self._header + encode_remaining_length(len(var) + len(payload)) + var + payload

    async def run(self, duration_s: float) -> FleetStats:
        """Publish for ``duration_s`` seconds; returns (and keeps) the stats."""
        start = time.monotonic()
        self.stats.started_at = time.time()
        cumulative = 0.0
        last = start
        second_count = 0
        second_mark = start + 1.0
        while True:
            now = time.monotonic()
            t = now - start
            if t >= duration_s:
                break
            if not self.paused:
                # Midpoint rule: exact for linear shapes, close enough for the others.
                cumulative += (
                    self.rate_hz * self.shape.factor((last + now) / 2 - start) * (now - last)
                )
            last = now
            if hasattr(self.source, "elapsed_s"):
                self.source.elapsed_s = t  # drives scheduled faults in the payload source
            target = np.maximum(np.floor(cumulative + self._phase), 0).astype(np.int64)
            if self.rows > 1:  # only whole messages: the rest waits for more readings
                target -= (target - self._sent) % self.rows
            due = np.nonzero(target > self._sent)[0]
            if due.size:
                second_count += await self._publish(due, target)
            while now >= second_mark:
                self.stats.per_second.append(second_count)
                second_count = 0
                second_mark += 1.0
            sleep = self.tick_s - (time.monotonic() - now)
            if sleep < 0:
                self.stats.late_ticks += 1
            await asyncio.sleep(max(sleep, 0))
        self.stats.per_second.append(second_count)
        for i, s in enumerate(self.streams):
            self.stats.sent[s.key] = int(self._sent[i])
        return self.stats

    async def _publish(self, due: np.ndarray, target: np.ndarray) -> int:
        batches: list[list[bytes]] = [[] for _ in self._pubs]
        ts = time.time()
        n = 0
        for i in due.tolist():
            conn = self._conn_of[i]
            out = batches[conn]
            for seq in range(int(self._sent[i]) + self.rows - 1, int(target[i]), self.rows):
                out.append(self._frame(i, seq, ts, conn))
            n += int(target[i] - self._sent[i])
            self._sent[i] = target[i]
        sends = []
        for pub, frames in zip(self._pubs, batches, strict=True):
            if frames:
                data = b"".join(frames)
                self.stats.bytes_sent += len(data)
                sends.append(pub.send(data))
        await asyncio.gather(*sends)
        return n

    @property
    def published_total(self) -> int:
        return int(self._sent.sum())

    def snapshot(self) -> dict[str, int]:
        """Current per-stream published counts (next seq) without stopping."""
        return {s.key: int(self._sent[i]) for i, s in enumerate(self.streams)}
