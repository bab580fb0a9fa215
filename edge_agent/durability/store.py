"""Local SQLite store: results, per-minute roll-ups, retention, and the cloud uplink queue.

All SQLite work happens on one background thread fed by an in-memory queue, so the event
loop and the MQTT thread never wait on the disk. The database uses WAL and incremental
vacuum. The file (and SQLite's -wal/-shm, which inherit its mode) is created 0600: it
holds raw sensor results.

Uplink: rows bound for the cloud are appended to ``uplink`` (an autoincrement id gives
the order). While the broker is connected the thread publishes the oldest rows at QoS 1
to the uplink topic and deletes each only after its PUBACK; while disconnected they stay
on disk, so they survive restarts and are flushed in order on reconnect (at least once).

Durable sink: :meth:`Store.add_batch` takes an ``on_commit`` callback, called on the
store thread with the ``(stream, seq)`` pairs of a batch once its transaction committed.
The agent passes the journal's :meth:`~edge_agent.durability.journal.Journal.committed`, so the
journal never marks a window answered before its result is on disk here: a ``kill -9``
re-emits it after the restart instead of losing it (at least once, see the journal).

Faults (a full disk, an I/O error): a failed transaction is rolled back and its rows stay
queued in memory; the thread reopens the database and retries with exponential backoff
(``flush_s`` doubling to ``retry_max_s``) and resumes by itself when space returns. While
it fails the store is *degraded* (:attr:`Store.degraded`, ``edge_store_degraded``, the
status API); live results keep flowing. Errors are logged once when the failure starts,
then at most one summary line per ``log_every_s``, and once on recovery.

Memory is bounded by ``max_pending`` queued rows (result rows plus uplink messages). Past
it the store sheds down to 90 % of the bound (in chunks, so shedding is not paid per
row), counting every row in :attr:`Store.dropped` and ``edge_store_dropped_total``:

1. the **oldest queued results first** (each with its uplink copy): retention would
   delete the oldest results first anyway, and the newest are what an operator and the
   cloud want after an outage;
2. **alerts and other uplink messages last**: they are rare (one per anomaly, not one
   per window) and the most valuable rows, so they go only when nothing else is left.

Dropped results are released to the journal like committed ones (``on_commit`` is called
for them too): keeping them unanswered would only move the unbounded memory into the
journal. So the durable copy is complete for outages shorter than ``max_pending`` rows
of traffic (200,000 rows: ~200 s at 1,000 results/s); beyond that the loss is counted.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading
import time
from collections import Counter, defaultdict, deque
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlite_utils

from edge_agent.durability.log_limit import LogLimiter

if TYPE_CHECKING:
    from edge_agent.ops.stats import AgentMetrics

log = logging.getLogger(__name__)

#: (ts, site, device, stream, seq, route, latency_ms, deadline_met, body)
ResultRow = tuple[float, str, str, str, int, str, float, int, str]
#: (created, kind, payload)
UplinkRow = tuple[float, str, str]
#: Called with the (stream, seq) pairs of committed (or given-up) results.
OnCommit = Callable[[list[tuple[Any, int]]], None]


class _Entry:
    """One unit of queued work: written in one transaction, dropped as a whole."""

    __slots__ = ("marks", "on_commit", "prune", "results", "uplink")

    def __init__(
        self,
        results: list[ResultRow] | None = None,
        uplink: list[UplinkRow] | None = None,
        *,
        marks: list[tuple[Any, int]] | None = None,
        on_commit: OnCommit | None = None,
        prune: bool = False,
    ) -> None:
        self.results = results or []
        self.uplink = uplink or []
        self.marks = marks
        self.on_commit = on_commit
        self.prune = prune

    @property
    def rows(self) -> int:
        return len(self.results) + len(self.uplink)

    def released(self) -> None:
        if self.on_commit is not None and self.marks:
            self.on_commit(self.marks)


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
        max_pending: int = 200_000,
        retry_max_s: float = 2.0,
        log_every_s: float = 10.0,
        metrics: AgentMetrics | None = None,
    ) -> None:
        self.path = Path(path)
        self.retention_s = retention_s
        self.max_bytes = max_bytes
        self.uplink_topic = uplink_topic
        self.max_pending = max_pending
        self._publish = publish
        self._connected = connected
        self._flush_s = flush_s
        self._retry_max_s = retry_max_s
        self._metrics = metrics
        self._lock = threading.Lock()
        self._pending: deque[_Entry] = deque()
        self._rows = 0  # queued rows, including those in the transaction being tried
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._limited = LogLimiter(log, log_every_s)
        self.written = 0
        self.uplinked = 0
        self.pruned = 0
        self.degraded = False
        self.failures = 0
        self.last_error: str | None = None
        self.dropped: Counter[str] = Counter()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._private()
        self._db = self._open(check_same_thread=True)
        self._db.conn.close()
        self._thread = threading.Thread(target=self._run, name="edge-store", daemon=True)

    def _private(self) -> None:
        """Create the file 0600 before SQLite does (it would use the umask: 0644), and
        tighten files an older version left readable."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        os.close(fd)
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.chmod(f"{self.path}{suffix}", 0o600)

    def _open(self, check_same_thread: bool = False) -> sqlite_utils.Database:
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

    # -- producers (any thread) ----------------------------------------------------------
    def add_results(self, rows: list[ResultRow]) -> None:
        self._put(_Entry(rows))

    def add_batch(
        self,
        produced: list[tuple[Any, str]],
        route: str,
        *,
        uplink: bool,
        on_commit: OnCommit | None = None,
    ) -> None:
        """Rows for the (request, result JSON) pairs of one batch; any thread.

        ``on_commit`` gets the batch's ``(stream, seq)`` pairs on the store thread once
        they are committed (or given up by the drop policy).
        """
        now, mono = time.time(), time.monotonic()
        rows: list[ResultRow] = []
        for r, body in produced:
            sid = r.stream.sid
            met = int(mono <= r.deadline)
            lat = (mono - r.arrival) * 1000.0
            rows.append((now, sid.site, sid.device, sid.stream, r.seq, route, lat, met, body))
        up = [(now, "result", body) for _, body in produced] if uplink else []
        marks = [(r.stream, r.seq) for r, _ in produced] if on_commit is not None else None
        self._put(_Entry(rows, up, marks=marks, on_commit=on_commit))

    def enqueue_uplink(self, kind: str, payload: str) -> None:
        self._put(_Entry(uplink=[(time.time(), kind, payload)]))

    def prune_soon(self) -> None:
        """Apply retention at the next flush instead of waiting for the 30 s timer."""
        self._put(_Entry(prune=True))

    def _put(self, entry: _Entry) -> None:
        with self._lock:
            self._pending.append(entry)
            self._rows += entry.rows
            shed = self._shed() if self._rows > self.max_pending else []
        self._released(shed)

    def _shed(self) -> list[_Entry]:
        """Drop queued rows down to 90 % of the bound (lock held): the oldest results
        first, then the oldest uplink-only messages (alerts). See the module docstring."""
        target = int(self.max_pending * 0.9)
        dropped: list[_Entry] = []
        for results_pass in (True, False):
            if self._rows <= target:
                break
            keep: deque[_Entry] = deque()
            for e in self._pending:
                if self._rows > target and e.rows and (bool(e.results) or not results_pass):
                    self._rows -= e.rows
                    dropped.append(e)
                else:
                    keep.append(e)
            self._pending = keep
        return dropped

    def _released(self, dropped: list[_Entry]) -> None:
        if not dropped:
            return
        results = sum(len(e.results) for e in dropped)
        other = sum(len(e.uplink) for e in dropped if not e.results)
        for kind, n in (("result", results), ("uplink", other)):
            if n:
                self.dropped[kind] += n
                if self._metrics is not None:
                    self._metrics.store_dropped.labels(kind).inc(n)
        self._limited(
            logging.ERROR,
            "store queue over its memory bound (%d rows; the disk is not keeping up): dropped "
            "%d results and %d uplink messages (oldest results first); %s dropped so far",
            self.max_pending,
            results,
            other,
            dict(self.dropped),
        )
        for e in dropped:
            e.released()

    # -- readers ---------------------------------------------------------------------------
    @property
    def pending_rows(self) -> int:
        """Rows queued in memory, not yet committed."""
        return self._rows

    def status(self) -> dict[str, Any]:
        """The store's part of the status API."""
        return {
            "degraded": self.degraded,
            "pending_rows": self._rows,
            "max_pending": self.max_pending,
            "written": self.written,
            "uplinked": self.uplinked,
            "pruned": self.pruned,
            "failures": self.failures,
            "dropped": dict(self.dropped),
            "last_error": self.last_error,
        }

    def pending_uplink(self) -> int:
        db = self._open()
        try:
            return db["uplink"].count
        finally:
            db.conn.close()

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait (blocking: call it from a thread) until everything queued is committed."""
        end = time.monotonic() + timeout
        self._wake.set()
        while self._rows and time.monotonic() < end and self._thread.is_alive():
            time.sleep(0.01)
        return not self._rows

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout)

    # -- thread ----------------------------------------------------------------------------
    def _run(self) -> None:
        db: sqlite_utils.Database | None = None
        next_prune = 0.0
        wait = self._flush_s
        while True:
            stopping = self._stop.is_set()
            if not stopping:
                self._wake.wait(wait)
                self._wake.clear()
                stopping = self._stop.is_set()
            try:
                if db is None:
                    db = self._open(check_same_thread=True)
                    if not next_prune:  # an old file may be over its limits already
                        self._prune(db, time.time())
                        next_prune = time.time() + 30.0
                force = self._write(db)
                now = time.time()
                if force or now >= next_prune:
                    next_prune = now + 30.0
                    self._prune(db, now)
                self._flush_uplink(db)
            except Exception as exc:  # a disk fault (or a bug) must not end the thread
                wait = min(self._retry_max_s, max(wait * 2, self._flush_s))
                self._failed(exc, wait)
                if db is not None:
                    with contextlib.suppress(Exception):
                        db.conn.close()
                db = None  # reopen: a connection that hit an I/O error is not trusted
                if stopping:
                    log.error("store stopped degraded; %d rows not written", self._rows)
                    return
                continue
            wait = self._flush_s
            if self.degraded:
                self._recovered()
            if stopping:
                break
        if db is not None:
            db.conn.close()

    def _failed(self, exc: Exception, retry_s: float) -> None:
        self.failures += 1
        self.last_error = f"{type(exc).__name__}: {exc}"
        if not self.degraded:
            self.degraded = True
            if self._metrics is not None:
                self._metrics.store_degraded.set(1)
            self._limited.reset()
        self._limited(
            logging.ERROR,
            "store degraded (%s): %d rows held in memory (bound %d), retrying every <=%.1fs",
            self.last_error,
            self._rows,
            self.max_pending,
            retry_s,
        )

    def _recovered(self) -> None:
        self.degraded = False
        if self._metrics is not None:
            self._metrics.store_degraded.set(0)
        self._limited.reset()
        log.warning(
            "store recovered after %d failed attempts; %d rows dropped while degraded",
            self.failures,
            sum(self.dropped.values()),
        )

    def _write(self, db: sqlite_utils.Database) -> bool:
        """Write what is queued in one transaction; True when a prune was requested.

        On failure the entries go back to the front of the queue (their order kept) and
        the memory bound applies to them like to new ones.
        """
        with self._lock:
            batch, self._pending = self._pending, deque()
        try:
            prune = self._commit(db, batch)
        except BaseException:
            with self._lock:
                batch.extend(self._pending)
                self._pending = batch
                shed = self._shed() if self._rows > self.max_pending else []
            self._released(shed)
            raise
        with self._lock:
            self._rows -= sum(e.rows for e in batch)
        for e in batch:
            e.released()
        return prune

    def _commit(self, db: sqlite_utils.Database, batch: deque[_Entry]) -> bool:
        prune = any(e.prune for e in batch)
        results = [row for e in batch for row in e.results]
        uplink = [row for e in batch for row in e.uplink]
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
