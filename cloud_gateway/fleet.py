"""Fleet state: the last heartbeat of every agent, kept in SQLite, with an offline sweep.

Heartbeats arrive as retained JSON on ``fleet/{agent}/status`` (or by HTTP report); the
broker's last will ``{"agent_id": ..., "online": false}`` marks a vanished agent at once,
and :meth:`Fleet.sweep` catches the ones that stop talking without a clean disconnect.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from typing import Any

from pydantic import ValidationError

from bus.topics import check_segment
from cloud_gateway.db import Database, dumps, loads, transaction
from cloud_gateway.enrolment import Enrolments, Identity
from cloud_gateway.heartbeats import HeartbeatHistory
from cloud_gateway.schemas import Selector, StatusReport
from models.errors import InvalidInput, NotFound, PermissionDenied

log = logging.getLogger(__name__)


_AGENT_COLUMNS = (
    "agent_id",
    "site",
    "labels",
    "online",
    "models",
    "update_state",
    "health",
    "metrics",
    "config",
    "last_seen",
    "first_seen",
)
_SELECT = f"select {', '.join(_AGENT_COLUMNS)} from agents"
# One statement per heartbeat (batched: Fleet.flush): the upsert keeps what the
# heartbeat does not own (labels: the admin's; first_seen; the site when the report has
# none), bumps ``beat``, leaves columns it does not name (added by other modules) alone,
# and returns the stored row. It changes nothing when the stored heartbeat is newer by the
# agent's own clock: with several replicas sharing the heartbeats (or two batches) an
# agent's "installing" could otherwise overwrite its "serving v2" written a moment before.
# Newer by more than STALE_S is a clock set back on the agent: the new one wins.
STALE_S = 60.0
_UPSERT = (
    f"insert into agents ({', '.join(_AGENT_COLUMNS)}, reported_ts, beat) "
    f"values ({', '.join('?' * len(_AGENT_COLUMNS))}, ?, 1) on conflict(agent_id) do update set "
    "site = coalesce(nullif(excluded.site, ''), agents.site), "
    + ", ".join(
        f"{c} = excluded.{c}"
        for c in (
            "online",
            "models",
            "update_state",
            "health",
            "metrics",
            "config",
            "last_seen",
            "reported_ts",
        )
    )
    + ", beat = coalesce(agents.beat, 0) + 1"
    + " where agents.reported_ts is null or excluded.reported_ts is null"
    + " or excluded.reported_ts >= agents.reported_ts"
    + f" or excluded.reported_ts < agents.reported_ts - {STALE_S}"
    + f" returning {', '.join(_AGENT_COLUMNS)}"
)
# The same without ``returning``, for a batch of heartbeats (executemany).
_UPSERT_MANY = _UPSERT[: _UPSERT.index(" returning ")]
_OFFLINE = f"update agents set online = 0 where agent_id = ? returning {', '.join(_AGENT_COLUMNS)}"


class Fleet:
    """Agents by id; every method runs on the gateway's event loop thread."""

    def __init__(
        self,
        db: Database,
        heartbeat_timeout_s: float,
        clock: Callable[[], float] = time.time,
        *,
        require_enrolment: bool | None = None,
        on_flush: Callable[[int, int], None] | None = None,
    ) -> None:
        self.db = db
        #: Told (ingested, dropped) after every write of queued heartbeats (the metrics).
        self.on_flush = on_flush
        self.timeout_s = heartbeat_timeout_s
        self.clock = clock
        self.enrolments = Enrolments(db)
        #: None: required as soon as any agent is enrolled (docs/architecture.md §3).
        self.require_enrolment = require_enrolment
        self.rejected = 0  # malformed status messages (counted, logged, never fatal)
        self.unenrolled = 0  # status for agent ids that are not enrolled (dropped)
        self._warned: set[str] = set()
        self.history = HeartbeatHistory(clock=clock)  # last 10 min per agent (fleet page)
        self._queue: list[tuple[StatusReport, float]] = []  # decoded, not yet written

    def enrolment_required(self) -> bool:
        if self.require_enrolment is not None:
            return self.require_enrolment
        return self.enrolments.count() > 0

    def identity(self, agent_id: str) -> Identity | None:
        """The enrolled identity of ``agent_id``; None if enrolment is not required.
        Raises PermissionDenied for an id that must be enrolled and is not."""
        found = self.enrolments.find(agent_id)
        if found is None and self.enrolment_required():
            raise PermissionDenied(
                f"agent {agent_id!r} is not enrolled (cloud-gateway fleet enrol); "
                "its status is ignored"
            )
        return found

    def receive(self, agent_id: str, payload: bytes) -> bool:
        """Decode one ``fleet/{agent}/status`` message and queue it for :meth:`flush`;
        False for a malformed one (counted, logged, dropped)."""
        try:
            data = json.loads(payload)
            if not isinstance(data, dict):
                raise InvalidInput("status is not a JSON object")
            data.setdefault("agent_id", agent_id)
            if data["agent_id"] != agent_id:
                raise InvalidInput(f"status for {data['agent_id']!r} on {agent_id!r}'s topic")
            report = StatusReport.model_validate(data)
            check_segment(report.agent_id, "agent")
        except (ValueError, ValidationError, InvalidInput, RecursionError) as exc:
            self.rejected += 1
            log.warning("dropping malformed status from %s: %s", agent_id[:64], str(exc)[:200])
            return False
        self._queue.append((report, self.clock()))
        return True

    @property
    def queued(self) -> int:
        return len(self._queue)

    def flush(self) -> tuple[int, int]:
        """Write every queued heartbeat: one query for the senders' enrolments, one
        transaction with one ``executemany`` (on PostgreSQL one commit, so one WAL flush,
        for a burst of thousands, not one each). Returns (ingested, dropped: not enrolled).
        """
        queue, self._queue = self._queue, []
        if not queue:
            return 0, 0
        ingested, dropped = self._write(queue)
        if self.on_flush is not None:
            self.on_flush(ingested, dropped)
        return ingested, dropped

    def _write(self, queue: list[tuple[StatusReport, float]]) -> tuple[int, int]:
        ids = list(dict.fromkeys(report.agent_id for report, _ in queue))
        known = self.enrolments.find_many(ids)
        required = len(known) < len(ids) and self.enrolment_required()
        rows: list[list[Any]] = []
        ingested = dropped = 0
        with transaction(self.db):
            for report, at in queue:
                identity = known.get(report.agent_id)
                if identity is None and required:
                    self._refuse(report.agent_id)
                    dropped += 1
                    continue
                ingested += 1
                if not report.online and not report.models:
                    # A last will (rare): in its place in the order, after what came first.
                    if rows:
                        self.db.executemany(_UPSERT_MANY, rows)
                        rows = []
                    self.apply(report, identity)
                    continue
                rows.append(self._values(report, identity, at))
                self.history.record(report, at)
            if rows:
                self.db.executemany(_UPSERT_MANY, rows)
        return ingested, dropped

    def _refuse(self, agent_id: str) -> None:
        self.unenrolled += 1
        if len(self._warned) < 1000 and agent_id not in self._warned:
            self._warned.add(agent_id)  # once per id: a flood must not flood the log
            log.warning(
                "dropping status: agent %r is not enrolled (cloud-gateway fleet enrol); "
                "its status is ignored",
                agent_id[:64],
            )

    def apply(self, report: StatusReport, identity: Identity | None = None) -> dict[str, Any]:
        """Record a heartbeat. ``identity`` (the enrolment) fixes the site; a heartbeat's
        ``labels`` are ignored: labels are the admin's (:meth:`set_labels`)."""
        check_segment(report.agent_id, "agent")
        now = self.clock()
        if not report.online and not report.models:
            # A last will carries only the id: keep what we knew, flip the flag.
            found = self.db.execute(_OFFLINE, [report.agent_id]).fetchone()
            if found is not None:
                return dict(zip(_AGENT_COLUMNS, found, strict=True))
        values = self._values(report, identity, now)
        # Plain SQL: sqlite-utils' upsert introspected the table on every call, which was
        # most of a heartbeat's cost at thousands of agents (docs/benchmarks.md).
        written = self.db.execute(_UPSERT, values).fetchone()
        if written is None:  # an older heartbeat than the one stored: kept as it was
            return self.get(report.agent_id)
        self.history.record(report, now)
        return dict(zip(_AGENT_COLUMNS, written, strict=True))

    @staticmethod
    def _values(report: StatusReport, identity: Identity | None, now: float) -> list[Any]:
        """The upsert's parameters for one heartbeat."""
        # As the agent sent them (no defaults filled in): a gate can tell a counter the
        # agent does not report from one at zero.
        sections = report.model_dump(
            mode="json", include={"models", "health", "metrics"}, exclude_unset=True
        )
        return [
            report.agent_id,
            identity.site if identity else report.site or "",
            "{}",  # labels of a new agent; an existing agent's are kept
            int(report.online),
            dumps(sections.get("models", {})),
            dumps(report.update),
            dumps(sections.get("health", {})),
            dumps(sections.get("metrics", {})),
            dumps(report.config),
            now,
            now,  # first_seen of a new agent; an existing agent's is kept
            report.ts if report.ts is not None and math.isfinite(report.ts) else None,
        ]

    def sweep(self) -> list[str]:
        """Mark agents whose last heartbeat is older than the timeout offline."""
        cutoff = self.clock() - self.timeout_s
        stale = [
            r["agent_id"]
            for r in self.db.query(
                "select agent_id from agents where online = 1 and last_seen < ?", [cutoff]
            )
        ]
        with transaction(self.db):
            for agent_id in stale:
                self.db.execute("update agents set online = 0 where agent_id = ?", [agent_id])
                log.info("agent %s missed its heartbeats: offline", agent_id)
        return stale

    def find(self, agent_id: str) -> dict[str, Any] | None:
        # Read your writes: what arrived before this call counts (an agent that just
        # connected can be targeted at once, not 20 ms later).
        if self._queue:
            self.flush()
        cur = self.db.execute(_SELECT + " where agent_id = ?", [agent_id])
        found = cur.fetchone()
        return dict(zip(_AGENT_COLUMNS, found, strict=True)) if found else None

    def get(self, agent_id: str) -> dict[str, Any]:
        row = self.find(agent_id)
        if row is None:
            raise NotFound(f"agent {agent_id!r} has never reported")
        return row

    def all(self) -> list[dict[str, Any]]:
        if self._queue:
            self.flush()
        return list(self.db.table("agents").rows_where(order_by="agent_id"))

    def set_labels(self, agent_id: str, labels: dict[str, str]) -> dict[str, Any]:
        self.get(agent_id)
        self.db.table("agents").update(agent_id, {"labels": dumps(labels)})
        return self.get(agent_id)

    def select(self, selector: Selector, *, online_only: bool = True) -> list[dict[str, Any]]:
        """Agents matching every non-empty criterion, sorted by id (stable wave plans)."""
        out = []
        for row in self.all():
            if online_only and not row["online"]:
                continue
            if selector.agents and row["agent_id"] not in selector.agents:
                continue
            if selector.sites and row["site"] not in selector.sites:
                continue
            labels = loads(row["labels"], {})
            if any(labels.get(k) != v for k, v in selector.labels.items()):
                continue
            out.append(row)
        return out


def serving_version(row: dict[str, Any], model: str) -> int | None:
    entry = loads(row["models"], {}).get(model)
    if isinstance(entry, dict) and isinstance(entry.get("version"), int):
        return entry["version"]
    return None


def agent_view(
    row: dict[str, Any], desired: dict[str, int], config: dict[str, Any] | None = None
) -> dict[str, Any]:
    return {
        "agent_id": row["agent_id"],
        "site": row["site"],
        "labels": loads(row["labels"], {}),
        "online": bool(row["online"]),
        "models": loads(row["models"], {}),
        "update": loads(row["update_state"]),
        "health": loads(row["health"], {}),
        "metrics": loads(row["metrics"], {}),
        "last_seen": row["last_seen"],
        "desired": desired,
        "config": config,
    }
