"""Per-stream sliding windows over validated readings, with sequence bookkeeping.

Sequence rules (per stream; a "run" is a stretch of consecutive seqs):

* ``seq == next``: appended.
* ``seq > next``: a gap; ``seq - next`` missing readings are counted, the window is reset
  (a window must hold consecutive samples) and a new run starts at this reading.
* ``run_start <= seq < next``: already received in this run: a duplicate, dropped.
* ``seq < run_start``: older than the current run: late (out of order), counted and dropped.

An acknowledged (QoS >= 1) reading that would open a gap is first held in the stream's
:class:`~edge_agent.ingest.reorder.ReorderBuffer`, so missing readings delivered after it
still fill the run in order (see that module).

Windows are emitted when the run holds ``window`` samples, then every ``hop`` samples.
The buffer is linear with room for several windows; when full, the last ``window`` rows
are moved to the front, so each reading costs a single row assignment.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from bus.topics import StreamId
from edge_agent.ingest.reorder import HeldReading, ReorderBuffer


class StreamWindow:
    """Window state of one stream. Touched only by the ingest thread."""

    __slots__ = (
        "_buf",
        "_cap",
        "_pos",
        "alert_topic",
        "device_json",
        "fill",
        "generation",
        "hop",
        "last_label",
        "last_seen",
        "next_seq",
        "pending",
        "prefix",
        "reorder",
        "result_topic",
        "run_start",
        "sid",
        "since",
        "topic",
        "window",
    )

    def __init__(self, sid: StreamId, window: int, hop: int, channels: int, generation: int):
        self.sid = sid
        self.window = window
        self.hop = hop
        self.generation = generation
        self._cap = window * 4
        self._buf = np.empty((self._cap, channels), dtype=np.float32)
        self._pos = 0
        self.fill = 0
        self.since = 0
        self.next_seq: int | None = None
        self.run_start = 0
        self.last_label: str | None = None
        self.last_seen = 0.0  # monotonic arrival of its last reading (idle-stream eviction)
        self.prefix = ""
        self.result_topic = ""
        self.alert_topic = ""
        self.device_json = ""
        self.topic = ""
        # Emitted, not yet answered windows by seq; None: not journaled (see journal.py).
        self.pending: dict[int, Any] | None = None
        self.reorder: ReorderBuffer | None = None  # created at the first hold

    # -- readings held for missing ones (edge_agent.ingest.reorder) ----------------------
    def hold(self, reading: HeldReading) -> bool:
        """Hold a reading that arrived ahead of missing ones; False: already held."""
        if self.reorder is None:
            self.reorder = ReorderBuffer()
        return self.reorder.add(reading)

    def holding(self) -> bool:
        return bool(self.reorder)

    def release(self, now: float, wait_s: float, max_rows: int) -> HeldReading | None:
        """The next held reading to feed: the one that now follows the run, or the lowest
        once waiting has expired; None when the rest must keep waiting (or none is held)."""
        buf = self.reorder
        if not buf or self.next_seq is None:
            return None
        return buf.pop(self.next_seq, now, force=buf.expired(now, wait_s, max_rows))

    def held(self) -> list[HeldReading]:
        return self.reorder.readings() if self.reorder else []

    def classify(self, seq: int | None, rows: int) -> tuple[str, int]:
        """Where a payload whose last row is ``seq`` falls: ok/gap/dup/late and missing count."""
        nxt = self.next_seq
        if seq is None or nxt is None:
            return "ok", 0
        first = seq - rows + 1
        if first == nxt:
            return "ok", 0
        if first > nxt:
            return "gap", first - nxt
        if seq >= self.run_start:
            return "dup", 0
        return "late", 0

    def reset(self, seq: int | None, rows: int) -> None:
        """Start a new run at the payload whose last row is ``seq``."""
        self.fill = 0
        self.since = 0
        self._pos = 0
        if seq is not None:
            self.run_start = seq - rows + 1

    def _room(self, rows: int) -> None:
        if self._pos + rows > self._cap:
            keep = min(self.fill, self.window)
            self._buf[:keep] = self._buf[self._pos - keep : self._pos]
            self._pos = keep

    def push_row(self, row: list[float], seq: int | None) -> np.ndarray | None:
        """Append one reading; returns a copy of the window when one is due."""
        if self._pos == self._cap:
            self._room(1)
        self._buf[self._pos] = row
        self._pos += 1
        self.fill += 1
        self.since += 1
        self.next_seq = (seq if seq is not None else (self.next_seq or 0)) + 1
        if self.fill >= self.window and (self.fill == self.window or self.since >= self.hop):
            self.since = 0
            return self._buf[self._pos - self.window : self._pos].copy()
        return None

    def push_rows(self, rows: np.ndarray, seq: int | None) -> list[tuple[np.ndarray, int]]:
        """Append several readings; returns every (window, offset of its last row) due."""
        n = len(rows)
        base = seq - n + 1 if seq is not None else (self.next_seq or 0)
        out: list[tuple[np.ndarray, int]] = []
        for i in range(n):
            win = self.push_row(rows[i], base + i)  # type: ignore[arg-type]
            if win is not None:
                out.append((win, i))
        return out

    def export(self) -> tuple[np.ndarray, int, int, int, int]:
        """(last rows up to one window, next_seq or -1, run_start, since, fill)."""
        keep = min(self.fill, self.window)
        rows = self._buf[self._pos - keep : self._pos].copy()
        nxt = -1 if self.next_seq is None else self.next_seq
        return rows, nxt, self.run_start, self.since, self.fill

    def restore(
        self, rows: np.ndarray, next_seq: int, run_start: int, since: int, fill: int
    ) -> None:
        n = min(len(rows), self.window)
        self._buf[:n] = rows[len(rows) - n :]
        self._pos = n
        self.fill = fill
        self.since = since
        self.next_seq = None if next_seq < 0 else next_seq
        self.run_start = run_start
        if self.reorder is not None:
            self.reorder.clear()  # the restored state's own held readings are fed after it
