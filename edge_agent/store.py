"""Local SQLite store: results, per-minute roll-ups, retention, and the cloud uplink queue.

All SQLite work happens on one background thread fed by a queue, so the event loop and
the MQTT thread never wait on the disk. The database uses WAL and incremental vacuum.

Uplink: rows bound for the cloud are appended to ``uplink`` (an autoincrement id gives
the order). While the broker is connected the thread publishes the oldest rows at QoS 1
to the uplink topic and deletes each only after its PUBACK; while disconnected they stay
on disk, so they survive restarts and are flushed in order on reconnect (at least once).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import sqlite_utils

log = logging.getLogger(__name__)

#: (ts, site, device, stream, seq, route, latency_ms, deadline_met, body)
ResultRow = tuple[float, str, str, str, int, str, float, int, str]


class Store:
    """Background writer for one SQLite file."""

    def __init__(
        self,
        path: Path,
        *,
        retention_s: float,
        max_bytes: float,
        uplink_topic: str,
        publish: Callable[[str, str], Any] | None = None,
        connected: Callable[[], bool] = lambda: False,
        flush_s: float = 0.5,
    ) -> None:
        self.path = Path(path)
        self.retention_s = retention_s
        self.max_bytes = max_bytes
        self.uplink_topic = uplink_topic
        self._publish = publish
        self._connected = connected
        self._flush_s = flush_s
        self._q: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        self._stop = threading.Event()
        self.written = 0
        self.uplinked = 0
        self.pruned = 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = self._open(check_same_thread=True)
        self._db.conn.close()
        self._thread = threading.Thread(target=self._run, name="edge-store", daemon=True)

    def _open(self, check_same_thread: bool = False) -> sqlite_utils.Database:
        import sqlite3

        conn = sqlite3.connect(str(self.path), check_same_thread=check_same_thread)
        conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
        db = sqlite_utils.Database(conn)
        db.enable_wal()
        conn.execute("PRAGMA synchronous=NORMAL")
        if "results" not in db.table_names():
            db.table("results").create(
                {
                    "ts": float,
                    "site": str,
                    "device": str,
                    "stream": str,
                    "seq": int,
                    "route": str,
                    "latency_ms": float,
                    "deadline_met": int,
                    "body": str,
                }
            )
            db.table("results").create_index(["ts"])
        if "rollups" not in db.table_names():
            db.table("rollups").create(
                {
                    "minute": int,
                    "site": str,
                    "device": str,
                    "stream": str,
                    "n": int,
                    "met": int,
                    "offloaded": int,
                    "lat_sum_ms": float,
                    "lat_max_ms": float,
                },
                pk=("minute", "site", "device", "stream"),
            )
        if "uplink" not in db.table_names():
            db.table("uplink").create(
                {"id": int, "created": float, "kind": str, "payload": str}, pk="id"
            )
        return db

    def start(self) -> None:
        self._thread.start()

    def add_results(self, rows: list[ResultRow]) -> None:
        self._q.put(("results", rows))

    def add_batch(self, produced: list[tuple[Any, str]], route: str, *, uplink: bool) -> None:
        """Rows for the (request, result JSON) pairs of one batch; any thread."""
        now, mono = time.time(), time.monotonic()
        rows: list[ResultRow] = []
        for r, body in produced:
            sid = r.stream.sid
            met = int(mono <= r.deadline)
            lat = (mono - r.arrival) * 1000.0
            rows.append((now, sid.site, sid.device, sid.stream, r.seq, route, lat, met, body))
        self._q.put(("results", rows))
        if uplink:
            for _, body in produced:
                self._q.put(("uplink", (now, "result", body)))

    def enqueue_uplink(self, kind: str, payload: str) -> None:
        self._q.put(("uplink", (time.time(), kind, payload)))

    def prune_soon(self) -> None:
        """Apply retention at the next flush instead of waiting for the 30 s timer."""
        self._q.put(("prune", None))

    def pending_uplink(self) -> int:
        db = self._open()
        try:
            return db["uplink"].count
        finally:
            db.conn.close()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._thread.join(timeout)

    # -- thread ----------------------------------------------------------------------------
    def _run(self) -> None:
        db = self._open(check_same_thread=True)
        self._prune(db, time.time())  # an old file may be over its limits already
        next_prune = time.time() + 30.0
        try:
            while True:
                stopping = self._stop.wait(self._flush_s)
                force = self._write(db)
                now = time.time()
                if force or now >= next_prune:
                    next_prune = now + 30.0
                    self._prune(db, now)
                self._flush_uplink(db)
                if stopping:
                    return
        except Exception:
            log.exception("store thread failed")
        finally:
            db.conn.close()

    def _write(self, db: sqlite_utils.Database) -> bool:
        """Write what is queued; True when a prune was requested."""
        prune = False
        results: list[ResultRow] = []
        uplink: list[tuple[float, str, str]] = []
        while True:
            try:
                kind, item = self._q.get_nowait()
            except queue.Empty:
                break
            if kind == "results":
                results.extend(item)
            elif kind == "prune":
                prune = True
            else:
                uplink.append(item)
        if not results and not uplink:
            return prune
        roll: dict[tuple[int, str, str, str], list[float]] = defaultdict(
            lambda: [0, 0, 0, 0.0, 0.0]
        )
        for ts, site, device, stream, _seq, route, lat, met, _body in results:
            r = roll[(int(ts // 60) * 60, site, device, stream)]
            r[0] += 1
            r[1] += met
            r[2] += route == "cloud"
            r[3] += lat
            r[4] = max(r[4], lat)
        with db.conn:
            db.conn.executemany("INSERT INTO results VALUES (?,?,?,?,?,?,?,?,?)", results)
            db.conn.executemany(
                "INSERT INTO rollups VALUES (?,?,?,?,?,?,?,?,?) ON CONFLICT DO UPDATE SET "
                "n=n+excluded.n, met=met+excluded.met, offloaded=offloaded+excluded.offloaded, "
                "lat_sum_ms=lat_sum_ms+excluded.lat_sum_ms, "
                "lat_max_ms=max(lat_max_ms, excluded.lat_max_ms)",
                [(*k, *v) for k, v in roll.items()],
            )
            db.conn.executemany(
                "INSERT INTO uplink (created, kind, payload) VALUES (?,?,?)", uplink
            )
        self.written += len(results)
        return prune

    def _prune(self, db: sqlite_utils.Database, now: float) -> None:
        with db.conn:
            cur = db.conn.execute("DELETE FROM results WHERE ts < ?", (now - self.retention_s,))
            db.conn.execute("DELETE FROM rollups WHERE minute < ?", (now - self.retention_s,))
            self.pruned += cur.rowcount
        page = db.conn.execute("PRAGMA page_size").fetchone()[0]
        pages = db.conn.execute("PRAGMA page_count").fetchone()[0]
        if page * pages > self.max_bytes:
            with db.conn:
                cur = db.conn.execute(
                    "DELETE FROM results WHERE rowid IN (SELECT rowid FROM results "
                    "ORDER BY ts LIMIT (SELECT count(*) / 4 + 1 FROM results))"
                )
                self.pruned += cur.rowcount
            db.conn.execute("PRAGMA incremental_vacuum")

    def _flush_uplink(self, db: sqlite_utils.Database, limit: int = 500) -> None:
        if self._publish is None or not self._connected():
            return
        rows = db.conn.execute(
            "SELECT id, kind, payload FROM uplink ORDER BY id LIMIT ?", (limit,)
        ).fetchall()
        infos = [(rid, self._publish(self.uplink_topic, payload)) for rid, _k, payload in rows]
        sent: list[int] = []
        end = time.monotonic() + 5.0
        for rid, info in infos:  # only a prefix of acknowledged rows is deleted: order holds
            while info is not None and not info.is_published() and time.monotonic() < end:
                if not self._connected():
                    break
                time.sleep(0.002)
            if info is None or not info.is_published():
                break  # keep it (and everything after it) for the next connection
            sent.append(rid)
        if sent:
            with db.conn:
                db.conn.executemany("DELETE FROM uplink WHERE id = ?", [(i,) for i in sent])
            self.uplinked += len(sent)
