"""Write-ahead journal: acknowledged QoS >= 1 readings survive ``kill -9``.

paho acknowledges a QoS-1 reading (PUBACK) right after the ingest callback returns; from
then on the broker forgets it. A graceful stop saves open windows
(:mod:`edge_agent.durability.stream_state`), but a crash would lose the rows of every
open window and every window emitted but not yet answered. So
:meth:`AgentCore.ingest_acked` appends each accepted QoS>=1 reading here with one
``os.write`` before it returns. QoS-0 readings are never acknowledged, never journaled,
and pay nothing. Rejected, duplicate and late readings are not journaled either (they added
nothing to a window; the dead letter of a bad one was already sent), so replay never sees a
bad payload.

Durability: the OS page cache survives the death of the process, so no ``fsync`` is
needed for crashes. Power loss or a kernel panic is out of scope unless ``fsync`` is on
(every record is then fsynced: slow, milliseconds on a real disk).

Files: ``seg-NNNNNNNNNN.wal`` in the journal directory. Each record is
``u32 length, u32 crc32, body``; a torn or corrupt record ends the readable part of its
segment (a crash can only tear the tail). Bodies:

* ``R`` reading: ``i64 seq of its last row, u16 topic length, topic, raw payload``. The
  resolved seq makes seq-less payloads replayable; the raw payload costs no re-encoding.
* ``M`` answered marks: JSON ``{topic: seq}``, every window of the topic with a seq up
  to it has been answered (a low-water mark: windows may finish out of order).
* ``S`` snapshot, always a segment's first record: JSON header (model layout signature,
  per stream its last ``window`` rows and sequence state, the windows still unanswered,
  the readings held for missing ones (:mod:`edge_agent.ingest.reorder`)) followed by the
  rows' and windows' float32 data and the held readings' raw payloads.

Answered marks trail the results on purpose: a result is taken as out when it was handed
to the MQTT client at least one tick (``lag_s``) earlier while the broker was connected,
so a crash between "published" and "on the wire" repeats the result instead of losing it.
With a durable sink (the SQLite store) a window counts as answered only once the store
has *committed* its result (:meth:`Journal.committed`, called from the store's thread),
not when it was published: a crash before the commit re-emits the window, so the store
and its uplink queue get every result too.
Delivery is therefore at least once: after a crash the last ticks' results, and results of
windows that finished out of order, may come twice (same seq); none is lost. Marks move
with QoS-1 traffic and, when it pauses, with the agent's idle timer (:meth:`Journal.idle`).

Compaction: every ``compact_s`` seconds or ``segment_bytes`` (and when the model layout
changes) a new segment starts with a snapshot of what is still needed, then older segments
are deleted. Replay uses the newest segment whose snapshot is intact, so a crash mid-
compaction falls back to the previous segment. Everything runs on the MQTT thread (or at
start/stop, when that thread is not running); other threads only append answered windows
to a deque, so the event loop never waits on the disk.

Startup replay restores the streams only when the snapshot's layout signature equals the
current model's (as for the graceful-restart state), re-feeds journaled readings through
the normal ingest path, and queues windows whose seq is above the topic's mark; they are
dispatched once the broker session is up (a QoS-0 result published earlier would be
dropped). Broker redeliveries of journaled readings are then duplicates by seq.

Limits: a stream without ``seq`` cannot be deduplicated against redeliveries; a stream
mixing QoS 0 and 1 replays with gaps where the QoS-0 readings were; results published while
the broker is disconnected are not re-sent (that is ``result_qos`` and the store's uplink
queue's job); a compaction holds the MQTT thread for ~1-3 ms (100 streams).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from edge_agent.durability.journal_files import READING, SNAP, ReplayTarget, frame, replay, segments
from edge_agent.durability.log_limit import LogLimiter
from models.errors import Conflict

if TYPE_CHECKING:
    from edge_agent.ingest.windows import StreamWindow
    from edge_agent.routing.batch import Request


class JournaledCore(ReplayTarget, Protocol):
    """What the journal needs of a model's core (``edge_agent.ingest.core.AgentCore``)."""

    @property
    def generation(self) -> int: ...

    @property
    def streams(self) -> dict[str, StreamWindow]: ...


log = logging.getLogger(__name__)


class Journal:
    """The journal of one agent; see the module docstring."""

    def __init__(
        self,
        directory: Path,
        *,
        segment_bytes: int = 16 * 2**20,
        compact_s: float = 30.0,
        fsync: bool = False,
        lag_s: float = 0.05,
        connected: Callable[[], bool] = lambda: True,
    ) -> None:
        self.dir = Path(directory)
        self.segment_bytes = segment_bytes
        self.compact_s = compact_s
        self.fsync = fsync
        self.lag_s = lag_s
        self._connected = connected
        self._lock = threading.Lock()
        self._core: JournaledCore | None = None
        self._fd: int | None = None
        self._dir_lock: int | None = None
        self._seg = 0
        self._bytes = 0
        self._gen = -1
        self._broken = False
        self._next_tick = 0.0
        self._next_compact = 0.0
        self._retry_at = 0.0  # after a failed write: the next fresh segment, not sooner
        self._retry_s = 0.0
        self._limited = LogLimiter(log)
        self._topics: dict[str, dict[int, Request]] = {}  # unanswered windows per topic
        self._high: dict[str, int] = {}  # highest answered seq per topic
        self._answered: deque[tuple[StreamWindow, int]] = deque()
        self._ripe: list[tuple[StreamWindow, int]] = []
        self.stats = {
            "records": 0,
            "bytes": 0,
            "compactions": 0,
            "write_errors": 0,
            "skipped": 0,  # records not written while a failed segment waited for a retry
        }

    # -- any thread --------------------------------------------------------------------
    def answered(self, produced: list[tuple[Request, Any]]) -> None:
        """Results of these requests were handed to the MQTT client (lock-free); only
        when no durable sink is configured (else :meth:`committed`)."""
        self.committed([(r.stream, r.seq) for r, _ in produced])

    def committed(self, pairs: list[tuple[StreamWindow, int]]) -> None:
        """Every sink has these ``(stream, seq)`` windows' results (lock-free)."""
        add = self._answered.append
        for st, seq in pairs:
            if st.pending is not None:
                add((st, seq))

    # -- MQTT thread -------------------------------------------------------------------
    def track(self, st: StreamWindow) -> None:
        """Record ``st``'s emitted windows until they are answered."""
        st.pending = self._topics.setdefault(st.topic, {})

    def append(self, st: StreamWindow, payload: bytes, arrival: float) -> None:
        """Journal a reading ``st`` has just accepted (its last row is ``next_seq - 1``)."""
        tb = st.topic.encode()
        body = READING.pack(b"R", st.next_seq - 1, len(tb)) + tb + payload  # type: ignore[operator]
        with self._lock:
            if st.generation != self._gen or (self._broken and arrival >= self._retry_at):
                self._compact(arrival)  # a new layout (or a failed write): fresh segment
            self._write(frame(body))
            if arrival >= self._next_tick:
                self._tick(arrival)

    def _write(self, data: bytes) -> None:
        if self._fd is None:
            return
        if self._broken:
            # Records after a torn one are unreadable: skip them until a fresh segment
            # (its snapshot holds the windows and stream state they would have restored).
            self.stats["skipped"] += 1
            return
        try:
            written = os.write(self._fd, data)
            if self.fsync:
                os.fsync(self._fd)
        except OSError as exc:
            written = -1
            self._limited(logging.ERROR, "journal write failed: %s", exc)
        if written != len(data):
            # A short record would hide every later one: restart with a snapshot, after a
            # backoff (a full disk would otherwise cost a snapshot per reading).
            self.stats["write_errors"] += 1
            self._broken = True
            self._backoff()
            return
        self._bytes += written
        self.stats["records"] += 1
        self.stats["bytes"] += written

    def idle(self) -> None:
        """Event loop, every ``lag_s``: advance the marks when no QoS-1 reading does.

        Never waits: when the MQTT thread holds the journal, it ticks itself.
        """
        if not self._lock.acquire(blocking=False):
            return
        try:
            now = time.monotonic()
            if self._fd is not None and now >= self._next_tick:
                self._tick(now, compact=False)  # a few bytes to the page cache at most
        finally:
            self._lock.release()

    def _tick(self, now: float, compact: bool = True) -> None:
        self._next_tick = now + self.lag_s
        if compact and (self._bytes >= self.segment_bytes or now >= self._next_compact):
            self._compact(now)
        if not self._connected():
            return  # results handed to a disconnected client may not have left
        ripe, self._ripe = self._ripe, self._drain()
        marks = self._promote(ripe)
        if marks:
            self._write(frame(b"M" + json.dumps(marks).encode()))

    def _drain(self) -> list[tuple[StreamWindow, int]]:
        q, out = self._answered, []
        while q:
            out.append(q.popleft())
        return out

    def _promote(self, ripe: list[tuple[StreamWindow, int]]) -> dict[str, int]:
        changed: dict[str, dict[int, Request]] = {}
        high = self._high
        for st, seq in ripe:
            p = st.pending
            p.pop(seq, None)  # type: ignore[union-attr]
            t = st.topic
            if seq > high.get(t, -1):
                high[t] = seq
            changed[t] = p  # type: ignore[assignment]
        # The oldest unanswered window bounds what is answered for sure. (min() runs in C
        # without releasing the GIL: safe while the MQTT thread adds windows.)
        return {t: (min(p) - 1 if p else high[t]) for t, p in changed.items()}

    def _compact(self, now: float, clean: bool = False) -> None:
        """Start a new segment holding what is still needed, then drop the older ones."""
        core = self._core
        if core is None:
            return
        body = self._snapshot(core, clean)
        self._seg += 1
        path = self.dir / f"seg-{self._seg:010d}.wal"
        try:
            # 0600: segments hold raw sensor readings.
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o600)
        except OSError as exc:
            if self._fd is None:
                raise  # at start: the agent must not run without the journal it was told to keep
            # Keep appending to the current segment; retry at the next compaction time.
            self._limited(logging.ERROR, "cannot start a journal segment: %s", exc)
            self.stats["write_errors"] += 1
            self._gen, self._next_compact = core.generation, now + self.compact_s
            self._backoff()
            return
        old, self._fd = self._fd, fd
        if old is not None:
            os.close(old)
        was_broken = self._broken
        self._bytes, self._broken = 0, False
        self._write(frame(body))
        if self._broken:
            return  # keep the older segments: this one has no usable snapshot
        if was_broken:
            self._retry_s = 0.0
            self._limited.reset()
            log.warning("journal writable again: new segment %s", path.name)
        if self.fsync:
            os.fsync(fd)
        for n, p in segments(self.dir):
            if n < self._seg:
                p.unlink(missing_ok=True)
        self._gen = core.generation
        self._next_compact = now + self.compact_s
        self.stats["compactions"] += 1

    def _backoff(self) -> None:
        self._retry_s = min(2.0, max(0.1, self._retry_s * 2))
        self._retry_at = time.monotonic() + self._retry_s

    def _snapshot(self, core: JournaledCore, clean: bool) -> bytes:
        streams: list[list[Any]] = []
        windows: list[list[Any]] = []
        blobs: list[bytes] = []
        held: list[list[Any]] = []
        held_blobs: list[bytes] = []
        for topic, pending in list(self._topics.items()):
            st = core.streams.get(topic)
            if st is not None and st.pending is pending and st.generation == core.generation:
                rows, nxt, run_start, since, fill = st.export()
                streams.append([topic, nxt, run_start, since, fill, len(rows)])
                blobs.append(np.ascontiguousarray(rows, dtype="<f4").tobytes())
            elif not pending:
                del self._topics[topic]  # a stream of an old layout, all answered
                continue
            for seq, req in list(pending.items()):
                win = np.ascontiguousarray(req.window, dtype="<f4")
                windows.append([topic, seq, req.ts, *win.shape])
                blobs.append(win.tobytes())
            if st is not None and st.pending is pending:
                for h in st.held():  # acknowledged, waiting for missing readings
                    held.append([topic, len(h.payload)])
                    held_blobs.append(h.payload)
        header = json.dumps(
            {
                "signature": core.signature(),
                "clean": clean,  # written by close(): nothing follows it
                "streams": streams,
                "windows": windows,
                "held": held,  # raw payloads, after the windows' data
            }
        ).encode()
        return SNAP.pack(b"S", len(header)) + header + b"".join(blobs) + b"".join(held_blobs)

    # -- start and stop (the MQTT thread is not running) -------------------------------
    def open(self, core: JournaledCore) -> dict[str, int]:
        """Replay what an earlier run left into ``core``, then start a fresh segment."""
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        # Two agents on one journal would delete each other's segments. The kernel drops
        # this lock when the process dies, so a crash never leaves it behind.
        fd = os.open(self.dir / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        os.fchmod(fd, 0o600)  # one an older version created 0644
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise Conflict(f"journal {self.dir} is in use by another running agent") from None
        self._dir_lock = fd
        self._core = core
        with self._lock:
            report = replay(self.dir, core, self.track)
            self._seg = max((n for n, _ in segments(self.dir)), default=0)
            self._compact(time.monotonic())
        return report

    def close(self) -> None:
        """After the agent drained: everything answered is final; write the last snapshot."""
        with self._lock:
            if self._fd is not None:
                self._promote(self._ripe + self._drain())
                self._ripe = []
                self._compact(time.monotonic(), clean=True)
            for fd in (self._fd, self._dir_lock):
                if fd is not None:
                    os.close(fd)
            self._fd = self._dir_lock = None
