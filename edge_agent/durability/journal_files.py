"""The journal on disk: record framing, segment files, and replaying them into a core.

See :mod:`edge_agent.durability.journal` for the design. Kept apart from the live writer so that
what is on disk, and how it is read back after a crash, can be read in one place.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import struct
import time
import zlib
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from bus.readings import PayloadError, decode, encode_binary

if TYPE_CHECKING:
    from edge_agent.ingest.windows import StreamWindow


class ReplayTarget(Protocol):
    """What replay needs of a model's core (``edge_agent.ingest.core.AgentCore``)."""

    def signature(self) -> list[object]: ...

    def stream_for(self, topic: str) -> StreamWindow | None: ...

    def ingest(
        self, topic: str, payload: bytes, arrival: float, *, hold: bool = ...
    ) -> StreamWindow | None: ...

    def capturing(
        self,
    ) -> AbstractContextManager[list[tuple[StreamWindow, np.ndarray, int, float | None]]]: ...

    def emit_replayed(
        self, st: StreamWindow, win: np.ndarray, seq: int, ts: float | None, arrival: float
    ) -> None: ...


log = logging.getLogger(__name__)

HEAD = struct.Struct("<II")  # body length, crc32(body)
READING = struct.Struct("<cqH")  # b"R", seq of the last row, topic length
SNAP = struct.Struct("<cI")  # b"S", header length


def frame(body: bytes) -> bytes:
    """One record: length and CRC, then ``body``."""
    return HEAD.pack(len(body), zlib.crc32(body)) + body


def read_records(data: bytes) -> tuple[list[bytes], int]:
    """The intact record bodies at the start of ``data`` and where they end.

    Reading stops at the first torn (short) or corrupt (CRC mismatch) record: framing
    after it cannot be trusted.
    """
    out: list[bytes] = []
    pos, n = 0, len(data)
    while pos + HEAD.size <= n:
        length, crc = HEAD.unpack_from(data, pos)
        end = pos + HEAD.size + length
        if end > n:
            break
        body = data[pos + HEAD.size : end]
        if zlib.crc32(body) != crc:
            break
        out.append(body)
        pos = end
    return out, pos


def segments(directory: Path) -> list[tuple[int, Path]]:
    segs = []
    for p in directory.glob("seg-*.wal"):
        with contextlib.suppress(ValueError):
            segs.append((int(p.stem[4:]), p))
    return sorted(segs)


def replay(
    directory: Path, core: ReplayTarget, track: Callable[[StreamWindow], None]
) -> dict[str, int]:
    """Feed the newest intact snapshot and the records after it into ``core``.

    Streams are restored (and ``track``ed), readings go through ``core.ingest``, and every
    window not covered by an answered mark is queued again. Returns counters.
    """
    report = {
        "unclean": 0,
        "readings": 0,
        "reemitted": 0,
        "suppressed": 0,
        "dropped": 0,
        "discarded": 0,
    }
    bodies: list[bytes] = []
    for _, path in reversed(segments(directory)):
        found, end = read_records(path.read_bytes())
        if found and found[0][:1] == b"S":
            bodies = found
            if end < path.stat().st_size:
                log.warning("journal %s: torn or corrupt tail ignored", path.name)
            break
    if not bodies:
        return report
    _, hlen = SNAP.unpack_from(bodies[0])
    header = json.loads(bodies[0][SNAP.size : SNAP.size + hlen])
    report["unclean"] = int(len(bodies) > 1 or not header.get("clean"))
    if header["signature"] != core.signature():
        log.warning("journal is for another model layout; not replayed")
        report["discarded"] = len(bodies)
        return report
    now = time.monotonic()
    blob, off = bodies[0], SNAP.size + hlen
    channels = len(core.signature()[0])  # type: ignore[arg-type]
    for topic, nxt, run_start, since, fill, n in header["streams"]:
        rows = np.frombuffer(blob, "<f4", n * channels, off).reshape(n, channels)
        off += rows.nbytes
        st = core.stream_for(topic)
        if st is not None:
            track(st)
            st.restore(rows, nxt, run_start, since, fill)
    todo: list[tuple[str, int, float | None, np.ndarray]] = []
    for topic, seq, ts, r, c in header["windows"]:
        todo.append((topic, seq, ts, np.frombuffer(blob, "<f4", r * c, off).reshape(r, c)))
        off += r * c * 4
    marks: dict[str, int] = {}
    with core.capturing() as captured:
        for topic, n in header.get("held", []):  # older snapshots have none
            core.ingest(topic, blob[off : off + n], now, hold=True)  # held again
            off += n
            report["readings"] += 1
        for body in bodies[1:]:
            if body[:1] == b"M":
                for t, m in json.loads(body[1:]).items():
                    marks[t] = max(m, marks.get(t, -1))
            elif body[:1] == b"R":
                report["readings"] += _replay_reading(core, body, track)
    todo += [(st.topic, seq, ts, win) for st, win, seq, ts in captured]
    shape = (core.signature()[1], channels)
    for topic, seq, ts, win in todo:
        if seq <= marks.get(topic, -1):
            report["suppressed"] += 1  # answered before the crash
            continue
        st = core.stream_for(topic)
        if st is None or win.shape != shape:
            report["dropped"] += 1  # a window of an older model layout
            continue
        if st.pending is None:
            track(st)
        core.emit_replayed(st, win.copy(), seq, ts, now)
        report["reemitted"] += 1
    return report


def _replay_reading(core: ReplayTarget, body: bytes, track: Callable[[StreamWindow], None]) -> int:
    _, seq, tlen = READING.unpack_from(body)
    start = READING.size
    topic = body[start : start + tlen].decode()
    payload = body[start + tlen :]
    st = core.stream_for(topic)
    if st is None:
        return 0
    if st.pending is None:
        track(st)
    names, window = core.signature()[0], core.signature()[1]
    try:
        r = decode(payload, tuple(names), window, 2**31)  # type: ignore[arg-type]
    except PayloadError:
        return 0  # was valid when journaled; the layout check makes this unreachable
    if r.seq is None:  # pin the seq it was given then
        ts = math.nan if r.ts is None else r.ts
        payload = encode_binary(np.asarray(r.values, dtype=np.float32), seq, ts)
    core.ingest(topic, payload, time.monotonic(), hold=True)  # journaled: acknowledged
    return 1
