"""The write-ahead journal: record framing, crash replay, answered marks, compaction."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge_agent.app.wiring import make_topics
from edge_agent.durability.journal import Journal
from edge_agent.durability.journal_files import frame, read_records
from edge_agent.ingest.core import AgentCore
from edge_agent.ops.stats import Stats
from edge_agent.routing.batch import Request
from models.errors import Conflict
from models.manifest import Manifest
from models.repository import ModelRepository

TOPIC = "sensors/s1/d1/acc"


class _Sink:
    """The transport side of the core: only dead letters are published without a loop."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, Any]] = []

    def publish(self, topic: str, payload: Any, qos: int = 0, retain: bool = False) -> None:
        self.sent.append((topic, payload))

    def publish_many(self, messages: list[tuple[str, str]], qos: int = 0) -> None:
        self.sent.extend(messages)


@pytest.fixture(scope="module")
def manifest(built_models: Any) -> Manifest:
    return ModelRepository(built_models.repository, check=False).manifest("motion-edge")


def _core(manifest: Manifest, hop: int | None = None) -> AgentCore:
    core = AgentCore(
        "a1", "site-1", make_topics(""), _Sink(), Stats(), slo_s=None, max_payload_bytes=65536
    )
    if hop is not None:
        core.hop_override = hop
    core.use_manifest(manifest)
    return core


def _open(core: AgentCore, where: Path, **kw: Any) -> tuple[Journal, dict[str, int]]:
    journal = Journal(where, **kw)
    report = journal.open(core)
    core.journal = journal
    return journal, report


ROWS = np.random.default_rng(7).normal(size=(400, 6)).astype(np.float32)


def _payload(seq: int, with_seq: bool = True) -> bytes:
    doc: dict[str, Any] = {"ts": 1.7e9 + seq, "values": [float(v) for v in ROWS[seq]]}
    if with_seq:
        doc["seq"] = seq
    return json.dumps(doc).encode()


def _feed(core: AgentCore, seqs: range, after_s: float, with_seq: bool = True) -> None:
    """Readings arriving ``after_s`` from now (the journal's ticks follow arrival times)."""
    arrival = time.monotonic() + after_s
    for i, seq in enumerate(seqs):
        core.ingest_acked(TOPIC, _payload(seq, with_seq), arrival + i * 1e-6)


def _taken(core: AgentCore) -> list[Request]:
    out = list(core._pending)
    core._pending.clear()
    return out


def _answer(journal: Journal, reqs: list[Request]) -> None:
    journal.answered([(r, "{}") for r in reqs])


def _crash(journal: Journal) -> None:
    """What the kernel does for a process killed with -9: close its files, nothing else."""
    for fd in (journal._fd, journal._dir_lock):
        os.close(fd)  # type: ignore[arg-type]


def test_torn_tail_and_corrupt_record_end_the_readable_part() -> None:
    bodies = [b"a" * 10, b"b" * 20, b"c" * 30]
    data = b"".join(frame(b) for b in bodies)
    assert read_records(data) == (bodies, len(data))
    assert read_records(data[:-5]) == (bodies[:2], len(data) - 30 - 8)  # torn last record
    bad = bytearray(data)
    bad[len(frame(bodies[0])) + 8 + 3] ^= 0xFF  # a flipped bit inside the second body
    assert read_records(bytes(bad)) == (bodies[:1], 18)
    assert read_records(b"\x01\x02") == ([], 0)


def test_crash_replay_rebuilds_windows_and_suppresses_answered(
    manifest: Manifest, tmp_path: Path
) -> None:
    core1 = _core(manifest)
    j1, report = _open(core1, tmp_path / "j", lag_s=0.0)
    assert report["readings"] == 0
    _feed(core1, range(135), 0.0)
    emitted = _taken(core1)
    assert [r.seq for r in emitted] == [99, 109, 119, 129]
    _answer(j1, emitted[:2])
    _feed(core1, range(135, 137), 0.1)  # two ticks: answers ripen, then become marks
    _crash(j1)  # and a record torn by the crash at the tail of the segment:
    seg = next((tmp_path / "j").glob("seg-*.wal"))
    with open(seg, "ab") as f:
        f.write(frame(b"R" + b"\x00" * 40)[:-7])

    core2 = _core(manifest)
    _, report = _open(core2, tmp_path / "j", lag_s=0.0)
    assert report["readings"] == 137 and report["suppressed"] == 2
    again = _taken(core2)
    assert [r.seq for r in again] == [119, 129]  # emitted, never answered
    for r in again:
        np.testing.assert_array_equal(r.window, ROWS[r.seq - 99 : r.seq + 1])
    assert core2.streams[TOPIC].next_seq == 137
    core2.ingest_acked(TOPIC, _payload(136), 0.2)  # the broker redelivers one: a duplicate
    assert core2.stats.duplicates == 1 and not core2._pending
    _feed(core2, range(137, 140), 0.3)
    (win,) = _taken(core2)
    assert win.seq == 139
    np.testing.assert_array_equal(win.window, ROWS[40:140])
    assert len(list((tmp_path / "j").glob("seg-*.wal"))) == 1  # open() compacted


def test_compaction_keeps_open_rows_and_unanswered_windows_only(
    manifest: Manifest, tmp_path: Path
) -> None:
    core = _core(manifest)
    j, _ = _open(core, tmp_path / "j", lag_s=0.0, compact_s=50.0)
    _feed(core, range(300), 0.0)
    emitted = _taken(core)
    assert len(emitted) == 21
    _answer(j, emitted[:-1])  # all but the window ending at 299
    _feed(core, range(300, 303), 0.1)  # ripen and promote
    before = sum(p.stat().st_size for p in (tmp_path / "j").glob("seg-*.wal"))
    _feed(core, range(303, 305), 100.0)  # past compact_s: a new segment
    (seg,) = (tmp_path / "j").glob("seg-*.wal")
    bodies, _ = read_records(seg.read_bytes())
    hlen = int.from_bytes(bodies[0][1:5], "little")
    header = json.loads(bodies[0][5 : 5 + hlen])
    assert [s[0] for s in header["streams"]] == [TOPIC]
    assert header["streams"][0][-1] == 100  # the open window's rows, not the whole history
    assert [w[1] for w in header["windows"]] == [299]  # answered windows are gone
    assert seg.stat().st_size < before / 4
    j.close()

    core2 = _core(manifest)
    _, report = _open(core2, tmp_path / "j")
    assert [r.seq for r in _taken(core2)] == [299]
    assert report["reemitted"] == 1 and core2.streams[TOPIC].next_seq == 305
    _feed(core2, range(305, 310), 0.0)
    (win,) = _taken(core2)
    np.testing.assert_array_equal(win.window, ROWS[210:310])


def test_graceful_close_replays_nothing_answered(manifest: Manifest, tmp_path: Path) -> None:
    core = _core(manifest)
    j, _ = _open(core, tmp_path / "j")
    _feed(core, range(120), 0.0)
    _answer(j, _taken(core))
    with pytest.raises(Conflict):  # one journal, one agent
        Journal(tmp_path / "j").open(_core(manifest))
    j.close()  # the agent calls this after draining: every answer is final
    core2 = _core(manifest)
    _, report = _open(core2, tmp_path / "j")
    assert report["reemitted"] == 0 and not core2._pending
    assert core2.streams[TOPIC].next_seq == 120


def test_seqless_readings_replay_with_the_seq_they_were_given(
    manifest: Manifest, tmp_path: Path
) -> None:
    core = _core(manifest)
    j, _ = _open(core, tmp_path / "j")
    _feed(core, range(105), 0.0, with_seq=False)
    assert [r.seq for r in _taken(core)] == [99]
    _crash(j)
    core2 = _core(manifest)
    _, report = _open(core2, tmp_path / "j")
    assert report["readings"] == 105
    (win,) = _taken(core2)
    assert win.seq == 99 and core2.streams[TOPIC].next_seq == 105
    np.testing.assert_array_equal(win.window, ROWS[:100])


def test_other_layout_is_not_replayed(manifest: Manifest, tmp_path: Path) -> None:
    core = _core(manifest)
    j, _ = _open(core, tmp_path / "j")
    _feed(core, range(105), 0.0)
    _crash(j)
    core2 = _core(manifest, hop=5)  # a model swap changed the hop: old rows do not fit
    _, report = _open(core2, tmp_path / "j")
    assert report["discarded"] > 0 and report["reemitted"] == 0
    assert TOPIC not in core2.streams and not core2._pending


def test_layout_change_starts_a_segment_in_the_new_layout(
    manifest: Manifest, tmp_path: Path
) -> None:
    core = _core(manifest)
    j, _ = _open(core, tmp_path / "j")
    _feed(core, range(100), 0.0)
    assert [r.seq for r in _taken(core)] == [99]  # still unanswered at the swap
    core.hop_override = 5
    core.use_manifest(manifest)  # a swap to a model with another hop: streams start over
    _feed(core, range(100, 205), 0.0)
    assert [r.seq for r in _taken(core)] == [199, 204]
    assert len(list((tmp_path / "j").glob("seg-*.wal"))) == 1  # the old layout's is gone
    _crash(j)
    core2 = _core(manifest, hop=5)
    _, report = _open(core2, tmp_path / "j")
    assert report["discarded"] == 0
    again = _taken(core2)
    assert [r.seq for r in again] == [99, 199, 204]  # same window shape: all still valid
    np.testing.assert_array_equal(again[0].window, ROWS[:100])
    np.testing.assert_array_equal(again[2].window, ROWS[105:205])
    assert core2.streams[TOPIC].next_seq == 205


def test_bad_payloads_are_dead_lettered_not_journaled(manifest: Manifest, tmp_path: Path) -> None:
    core = _core(manifest)
    j, _ = _open(core, tmp_path / "j")
    records = j.stats["records"]
    for bad in (b"{", b'{"seq": 1, "values": [1, 2]}', b"\x00" * 30):
        core.ingest_acked(TOPIC, bad, time.monotonic())
    core.ingest_acked("bad-topic", _payload(0), time.monotonic())
    assert j.stats["records"] == records
    assert len(core.publisher.sent) == 4  # type: ignore[attr-defined]
    assert sum(core.stats.deadletter_by_reason.values()) == 4
