"""SQLite store: results and roll-ups, retention, and the uplink queue across restarts."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any

from edge_agent.durability.store import Store
from tests.edge_agent.conftest import Subscriber, publisher


def _row(ts: float, seq: int, route: str = "edge", met: int = 1) -> tuple:
    return (ts, "s", "d", "x", seq, route, 2.5, met, json.dumps({"seq": seq}))


def _wait(cond: Any, timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while not cond() and time.monotonic() < end:
        time.sleep(0.02)
    assert cond()


def test_results_rollups_and_retention(tmp_path: Path) -> None:
    db = tmp_path / "edge.db"
    store = Store(db, retention_s=3600, max_bytes=50e6, uplink_topic="u", flush_s=0.05)
    store.start()
    now = time.time()
    store.add_results([_row(now - 7200, 1), _row(now - 7200, 2, "cloud", 0)])
    store.add_results([_row(now, 3), _row(now, 4, "cloud")])
    _wait(lambda: store.written == 4)
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    rolls = conn.execute("SELECT n, met, offloaded FROM rollups ORDER BY minute").fetchall()
    assert rolls == [(2, 1, 1), (2, 2, 1)]
    store.prune_soon()
    _wait(lambda: store.pruned >= 2)
    store.stop()
    assert [r[0] for r in conn.execute("SELECT seq FROM results ORDER BY seq")] == [3, 4]
    assert conn.execute("SELECT count(*) FROM rollups").fetchone()[0] == 1


def test_size_limit_prunes_oldest(tmp_path: Path) -> None:
    store = Store(
        tmp_path / "e.db", retention_s=1e9, max_bytes=200_000, uplink_topic="u", flush_s=0.05
    )
    store.start()
    now = time.time()
    store.add_results([(now + i, "s", "d", "x", i, "edge", 1.0, 1, "x" * 500) for i in range(2000)])
    _wait(lambda: store.written == 2000)
    store.prune_soon()
    _wait(lambda: store.pruned > 0)
    store.stop()
    conn = sqlite3.connect(tmp_path / "e.db")
    left = [r[0] for r in conn.execute("SELECT seq FROM results ORDER BY seq")]
    assert 0 < len(left) < 2000 and left[-1] == 1999  # newest kept


def test_uplink_survives_restart_and_flushes_in_order(
    mosquitto: Any, tmp_path: Path, topic_prefix: str
) -> None:
    db = tmp_path / "edge.db"
    topic = f"{topic_prefix}/uplink/a1"
    offline = Store(
        db,
        retention_s=3600,
        max_bytes=50e6,
        uplink_topic=topic,
        flush_s=0.05,
        publish=lambda t, p: None,
        connected=lambda: False,
    )
    offline.start()
    for i in range(50):
        offline.enqueue_uplink("alert", json.dumps({"n": i}))
    _wait(lambda: offline.pending_uplink() == 50)
    offline.stop()  # "agent restart" while the uplink is down

    sub = Subscriber(mosquitto.url, topic)
    client = publisher(mosquitto.url)
    online = Store(
        db,
        retention_s=3600,
        max_bytes=50e6,
        uplink_topic=topic,
        flush_s=0.05,
        publish=lambda t, p: client.publish(t, p, 1),
        connected=lambda: client.is_connected(),
    )
    online.start()
    try:
        got = sub.wait_for(50, timeout=10)
        _wait(lambda: online.pending_uplink() == 0)
    finally:
        online.stop()
        client.disconnect()
        client.loop_stop()
        sub.close()
    assert [g["n"] for g in got] == list(range(50))
    assert online.uplinked == 50


class _Stream:
    def __init__(self, device: str) -> None:
        self.sid = type("Sid", (), {"site": "s", "device": device, "stream": "acc"})()


class _Req:
    """What add_batch reads of a finished request."""

    def __init__(self, stream: _Stream, seq: int) -> None:
        self.stream, self.seq = stream, seq
        self.deadline = self.arrival = time.monotonic()


def test_memory_bound_drops_oldest_results_first_and_counts(tmp_path: Path) -> None:
    from edge_agent.ops.stats import AgentMetrics

    metrics = AgentMetrics()
    store = Store(
        tmp_path / "e.db",
        retention_s=3600,
        max_bytes=50e6,
        uplink_topic="u",
        flush_s=0.05,
        max_pending=100,
        metrics=metrics,
    )
    released: list[int] = []
    st = _Stream("d1")
    for i in range(5):  # the oldest rows queued: alerts
        store.enqueue_uplink("alert", json.dumps({"n": i}))
    for b in range(15):  # not started: everything waits in memory, as on a full disk
        produced = [(_Req(st, b * 10 + k), json.dumps({"seq": b * 10 + k})) for k in range(10)]
        store.add_batch(
            produced,
            "edge",
            uplink=False,
            on_commit=lambda pairs: released.extend(seq for _, seq in pairs),
        )
        assert store.pending_rows <= 100
    # Shedding goes down to 90 % in whole batches, oldest results first; alerts stay.
    assert store.dropped == {"result": 60}
    assert released == list(range(60))  # given up, so the journal does not hold them
    assert metrics.registry.get_sample_value("edge_store_dropped_total", {"kind": "result"}) == 60
    store.start()
    assert store.flush(10)
    store.stop()
    assert released == list(range(150))  # the rest once committed
    conn = sqlite3.connect(tmp_path / "e.db")
    assert [r[0] for r in conn.execute("SELECT seq FROM results ORDER BY seq")] == list(
        range(60, 150)
    )
    assert conn.execute("SELECT count(*) FROM uplink WHERE kind='alert'").fetchone()[0] == 5


def test_alerts_are_dropped_only_when_no_result_is_left(tmp_path: Path) -> None:
    store = Store(
        tmp_path / "e.db", retention_s=3600, max_bytes=50e6, uplink_topic="u", max_pending=10
    )
    for i in range(12):
        store.enqueue_uplink("alert", json.dumps({"n": i}))
    assert store.dropped == {"uplink": 2} and store.pending_rows == 10  # shed to 9, +1


def test_on_commit_comes_after_the_rows_are_on_disk(tmp_path: Path) -> None:
    db = tmp_path / "e.db"
    store = Store(db, retention_s=3600, max_bytes=50e6, uplink_topic="u", flush_s=0.05)
    seen: list[list[int]] = []

    def on_commit(pairs: list[tuple[Any, int]]) -> None:
        conn = sqlite3.connect(db)  # another connection sees only what was committed
        seen.append([r[0] for r in conn.execute("SELECT seq FROM results ORDER BY seq")])
        conn.close()

    store.start()
    st = _Stream("d1")
    store.add_batch(
        [(_Req(st, 7), "{}"), (_Req(st, 8), "{}")], "edge", uplink=True, on_commit=on_commit
    )
    _wait(lambda: bool(seen))
    store.stop()
    assert seen == [[7, 8]]


def test_store_files_are_private(tmp_path: Path) -> None:
    import os

    old = tmp_path / "old.db"
    old.write_bytes(b"")
    old.chmod(0o644)  # an earlier version's file
    for db in (tmp_path / "new.db", old):
        store = Store(db, retention_s=3600, max_bytes=50e6, uplink_topic="u", flush_s=0.05)
        store.start()
        store.add_results([_row(time.time(), 1)])
        _wait(lambda s=store: s.written == 1)
        for f in (db, Path(f"{db}-wal")):
            assert oct(os.stat(f).st_mode & 0o777) == "0o600", f
        store.stop()
