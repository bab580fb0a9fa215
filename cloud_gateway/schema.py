"""The gateway's tables and their migrations, for SQLite and PostgreSQL alike.

``schema_version`` holds the number of the last migration applied. :func:`migrate` runs
the missing ones in order, each in its own transaction, under a lock that serialises
gateway replicas starting at the same time (PostgreSQL: a transaction advisory lock;
SQLite: ``begin immediate``). Migration 1 is the baseline: it creates what is missing
and adds the columns older SQLite files (from before ``schema_version``) lack, so it
can run on any database this gateway ever wrote. New migrations are appended, never
edited: a replica never runs a schema older than the database's (it refuses to start).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable

from cloud_gateway.db import Database, DatabaseError

log = logging.getLogger(__name__)

# Any fixed 64-bit number; the leader lock (cloud_gateway.leader) uses another.
MIGRATION_LOCK = 0x6564_6765_636C_6D31  # "edgeclm1"


@dataclasses.dataclass(frozen=True)
class TableSpec:
    columns: dict[str, type]
    pk: tuple[str, ...]
    # PostgreSQL: an identity column (SQLite: an "integer primary key" is the rowid).
    serial: str | None = None


TABLES: dict[str, TableSpec] = {
    "versions": TableSpec(
        {
            "name": str,
            "version": int,
            "sha256": str,
            "size": int,
            "signer": str,
            "manifest": str,
            "uploaded_at": float,
        },
        ("name", "version"),
    ),
    "agents": TableSpec(
        {
            "agent_id": str,
            "site": str,
            "labels": str,
            "online": int,
            "models": str,
            "update_state": str,
            "health": str,
            "metrics": str,
            "config": str,  # the heartbeat's config twin report
            "last_seen": float,
            "first_seen": float,
            # Bumped by every heartbeat written: the rollout engine re-reads a row only
            # when it changed (cloud_gateway.rollouts), whatever the clock says.
            "beat": int,
            # The agent's own timestamp of the heartbeat stored (migration 2): with several
            # replicas (or a batch) an older heartbeat written after a newer one is ignored.
            "reported_ts": float,
        },
        ("agent_id",),
    ),
    "desired": TableSpec(
        {
            "agent_id": str,
            "model": str,
            "version": int,
            "sha256": str,
            "url": str,
            "rollback": int,
            "topics": str,
            "state": str,
            "rollout_id": str,
            "issued_at": float,
        },
        ("agent_id", "model"),
    ),
    "rollouts": TableSpec(
        {
            "id": str,
            "model": str,
            "version": int,
            "strategy": str,
            "waves": str,
            "selector": str,
            "topics": str,
            "gates": str,
            "bake_s": float,
            "wave_timeout_s": float,
            "state": str,
            "current_wave": int,
            "wave_started_at": float,
            "wave_converged_at": float,
            "reason": str,
            "cloud": str,
            "kind": str,  # "model" (NULL in rows written before config rollouts) or "config"
            "config": str,  # a config rollout's values (JSON)
            "created_at": float,
            "updated_at": float,
            "finished_at": float,
        },
        ("id",),
    ),
    "rollout_agents": TableSpec(
        {
            "rollout_id": str,
            "agent_id": str,
            "wave": int,
            "previous_version": int,
            "previous_config": str,  # config rollouts: the agent's values before (JSON)
            "state": str,
            "baseline": str,
            "issued_at": float,
            "converged_at": float,
            "reason": str,
        },
        ("rollout_id", "agent_id"),
    ),
    # Per-agent identities (cloud_gateway.enrolment): only digests, never a token.
    "enrolments": TableSpec(
        {
            "agent_id": str,
            "site": str,
            "token_sha256": str,
            "mqtt_hash": str,
            "enrolled_at": float,
        },
        ("agent_id",),
    ),
    # The configuration twin: each agent's desired live settings (cloud_gateway.config).
    "agent_config": TableSpec(
        {"agent_id": str, "version": int, "values": str, "rollout_id": str, "set_at": float},
        ("agent_id",),
    ),
    # Monotonic counters that must survive restarts (the desired-state sequence).
    "counters": TableSpec({"name": str, "value": int}, ("name",)),
    "events": TableSpec(
        {"id": int, "ts": float, "rollout_id": str, "kind": str, "detail": str},
        ("id",),
        serial="id",
    ),
}

INDEXES = (
    ("idx_rollout_agents_agent", "rollout_agents", ("agent_id",), False),
    ("idx_enrolments_token", "enrolments", ("token_sha256",), True),
)

_TYPES = {
    "sqlite": {str: "TEXT", int: "INTEGER", float: "FLOAT"},
    "postgresql": {str: "text", int: "bigint", float: "double precision"},
}


def create_sql(db: Database, name: str, spec: TableSpec) -> str:
    types = _TYPES[db.dialect]
    cols = []
    for col, typ in spec.columns.items():
        decl = f'"{col}" {types[typ]}'
        if col == spec.serial:
            decl = (
                f'"{col}" integer primary key'
                if db.dialect == "sqlite"
                else f'"{col}" bigint generated by default as identity primary key'
            )
        elif col in spec.pk:
            decl += " not null"
        cols.append(decl)
    if spec.serial is None:
        cols.append("primary key (" + ", ".join(f'"{c}"' for c in spec.pk) + ")")
    return f"create table if not exists {name} ({', '.join(cols)})"


def _columns(db: Database, table: str) -> set[str]:
    if db.dialect == "sqlite":
        return {r["name"] for r in db.query(f"pragma table_info({table})")}
    return {
        r["column_name"]
        for r in db.query(
            "select column_name from information_schema.columns "
            "where table_schema = current_schema() and table_name = ?",
            [table],
        )
    }


def baseline(db: Database) -> None:
    """Migration 1: every table, index and column of the schema above."""
    types = _TYPES[db.dialect]
    for name, spec in TABLES.items():
        db.execute(create_sql(db, name, spec))
        present = _columns(db, name)
        for col, typ in spec.columns.items():
            if col not in present:  # an SQLite file from an older gateway
                db.execute(f'alter table {name} add column "{col}" {types[typ]}')
    for index, table, cols, unique in INDEXES:
        kind = "unique index" if unique else "index"
        db.execute(f"create {kind} if not exists {index} on {table} ({', '.join(cols)})")


def add_columns(db: Database, table: str, columns: dict[str, type]) -> None:
    present = _columns(db, table)
    for col, typ in columns.items():
        if col not in present:
            db.execute(f'alter table {table} add column "{col}" {_TYPES[db.dialect][typ]}')


def heartbeat_order(db: Database) -> None:
    """Migration 2: ``agents.reported_ts`` (heartbeats from several replicas may be
    written out of order; the newer one must win)."""
    add_columns(db, "agents", {"reported_ts": float})


#: Applied in order; the list index + 1 is the schema version. Append, never edit.
MIGRATIONS: list[Callable[[Database], None]] = [baseline, heartbeat_order]


def current_version(db: Database) -> int:
    row = db.execute("select max(version) from schema_version").fetchone()
    return int(row[0] or 0)


def migrate(db: Database) -> int:
    """Bring ``db`` to the newest schema; returns the version it is at."""
    db.execute(
        "create table if not exists schema_version (version integer primary key, applied_at "
        + ("FLOAT" if db.dialect == "sqlite" else "double precision")
        + ")"
    )
    with db.transaction():
        if db.dialect == "postgresql":
            # Replicas starting together: one migrates, the others wait here, then see it.
            db.execute("select pg_advisory_xact_lock(?)", [MIGRATION_LOCK])
        version = current_version(db)
        if version > len(MIGRATIONS):
            raise DatabaseError(
                f"the database is at schema version {version}, newer than this gateway "
                f"({len(MIGRATIONS)}): upgrade the gateway, or point it at another database"
            )
        for number in range(version + 1, len(MIGRATIONS) + 1):
            MIGRATIONS[number - 1](db)
            db.execute(
                "insert into schema_version (version, applied_at) values (?, ?)",
                [number, time.time()],
            )
            log.info("gateway database migrated to schema version %d", number)
    return len(MIGRATIONS)
