"""Readings that arrived ahead of missing ones, held briefly so windows stay in order.

A broker does not always deliver a persistent session's QoS-1 messages in publish order:
mosquitto, restoring a session from its persistence file while sensors re-send, was seen
handing the agent ~40 readings per stream *after* newer ones (the reliability suite's
"broker killed, agent back after the sensors" scenario). Without this buffer the agent
took the newer reading as a gap, started a new run, and then dropped the missing readings
as late: their windows were lost although every reading had been acknowledged.

So an acknowledged reading whose first ``seq`` is beyond the stream's next one is held
here instead of opening a gap. When the missing readings arrive, the held ones follow them
in ``seq`` order. When no held reading could be released for ``wait_s`` (the missing ones
were really lost), or more than ``max_rows`` rows are held, the lowest is released anyway
and the gap counted as before. Only QoS >= 1 readings are held: a QoS-0 gap is a loss that
no later delivery fills, and waiting for it would only add latency.

The cost: windows after a real gap of a QoS-1 stream wait up to ``wait_s``. A buffer lives
in its :class:`~edge_agent.ingest.windows.StreamWindow` and is touched only by the MQTT
thread (or at start and stop, when that thread is not running).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Any


@dataclass(slots=True)
class HeldReading:
    """One held payload, decoded, with the raw bytes kept for snapshots."""

    first: int  # seq of its first row
    seq: int  # seq of its last row
    values: Any  # the decoded rows (a list for one row, an array for several)
    rows: int
    ts: float | None
    arrival: float
    payload: bytes


class ReorderBuffer:
    """Held readings of one stream, by the seq of their first row."""

    __slots__ = ("_firsts", "_held", "rows", "since")

    def __init__(self) -> None:
        self._held: dict[int, HeldReading] = {}
        self._firsts: list[int] = []  # sorted keys of _held
        self.rows = 0
        self.since = 0.0  # monotonic time of the first hold, or of the last in-order release

    def __len__(self) -> int:
        return len(self._held)

    def add(self, reading: HeldReading) -> bool:
        """Hold ``reading``; False when a reading with the same first seq is already held
        (a redelivery: the caller counts it as a duplicate)."""
        if reading.first in self._held:
            return False
        if not self._held:
            self.since = reading.arrival
        self._held[reading.first] = reading
        bisect.insort(self._firsts, reading.first)
        self.rows += reading.rows
        return True

    def expired(self, now: float, wait_s: float, max_rows: int) -> bool:
        """No release for ``wait_s``, or too much held: stop waiting for the lowest gap."""
        return bool(self._held) and (now - self.since >= wait_s or self.rows > max_rows)

    def pop(self, next_seq: int, now: float, force: bool = False) -> HeldReading | None:
        """The lowest held reading if it starts at or before ``next_seq`` (it now follows
        what the stream has), or whatever the lowest is when ``force``; else None."""
        if not self._firsts or (self._firsts[0] > next_seq and not force):
            return None
        first = self._firsts.pop(0)
        reading = self._held.pop(first)
        self.rows -= reading.rows
        if first <= next_seq:
            self.since = now  # progress: the rest may wait again
        # else: given up; ``since`` stays old, so every reading held as long goes too
        return reading

    def readings(self) -> list[HeldReading]:
        """Everything held, lowest seq first (for snapshots and saved state)."""
        return [self._held[f] for f in self._firsts]

    def clear(self) -> None:
        self._held.clear()
        self._firsts.clear()
        self.rows = 0
