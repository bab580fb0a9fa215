"""The gateway's SQLite schema (sqlite-utils, WAL): registry, fleet, desired state, rollouts.

Everything the gateway must remember across a restart lives here; in-memory state is a
cache that can be rebuilt from these tables (that is what makes rollouts resumable).
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import sqlite_utils

_TABLES: dict[str, tuple[dict[str, type], str | tuple[str, ...]]] = {
    "versions": (
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
    "agents": (
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
        },
        "agent_id",
    ),
    "desired": (
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
    "rollouts": (
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
        "id",
    ),
    "rollout_agents": (
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
    "enrolments": (
        {
            "agent_id": str,
            "site": str,
            "token_sha256": str,
            "mqtt_hash": str,
            "enrolled_at": float,
        },
        "agent_id",
    ),
    # The configuration twin: each agent's desired live settings (cloud_gateway.config).
    "agent_config": (
        {"agent_id": str, "version": int, "values": str, "rollout_id": str, "set_at": float},
        "agent_id",
    ),
    # Monotonic counters that must survive restarts (the desired-state sequence).
    "counters": ({"name": str, "value": int}, "name"),
    "events": (
        {"id": int, "ts": float, "rollout_id": str, "kind": str, "detail": str},
        "id",
    ),
}


def open_db(path: Path) -> sqlite_utils.Database:
    """Open (and create or migrate) the gateway database in WAL mode."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # The gateway touches SQLite only from its event loop thread; isolation_level=None
    # keeps sqlite-utils' explicit transactions and avoids implicit long-lived ones.
    conn = sqlite3.connect(str(path), isolation_level=None)
    db = sqlite_utils.Database(conn)
    db.enable_wal()
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA busy_timeout=5000")
    for name, (columns, pk) in _TABLES.items():
        table = db.table(name)
        if not table.exists():
            table.create(columns, pk=pk, not_null=set(pk) if isinstance(pk, tuple) else {pk})
        else:
            missing = {c: t for c, t in columns.items() if c not in table.columns_dict}
            for col, typ in missing.items():
                table.add_column(col, typ)
    if "idx_rollout_agents_agent" not in {i.name for i in db.table("rollout_agents").indexes}:
        db.table("rollout_agents").create_index(["agent_id"], "idx_rollout_agents_agent")
    if "idx_enrolments_token" not in {i.name for i in db.table("enrolments").indexes}:
        db.table("enrolments").create_index(["token_sha256"], "idx_enrolments_token", unique=True)
    return db


def next_counter(db: sqlite_utils.Database, name: str, floor: int = 0) -> int:
    """Increase the persisted counter ``name`` to at least ``floor`` and by at least one;
    returns the new value (atomic: the CLI and the server may share the database)."""
    db.execute("insert or ignore into counters (name, value) values (?, 0)", [name])
    # One statement: two processes incrementing at once still get distinct values.
    row = db.execute(
        "update counters set value = max(value + 1, ?) where name = ? returning value",
        [floor, name],
    ).fetchone()
    return int(row[0])


@contextlib.contextmanager
def transaction(db: sqlite_utils.Database) -> Iterator[None]:
    """One SQLite transaction around many writes (a 10,000-agent wave is one commit, not
    tens of thousands). Nested use joins the outer transaction. A sqlite-utils write
    inside commits early (its ``with conn:``); later statements then autocommit, which
    costs speed, not correctness."""
    conn = db.conn
    if conn.in_transaction:
        yield
        return
    conn.execute("begin")
    try:
        yield
    except BaseException:
        if conn.in_transaction:
            conn.execute("rollback")
        raise
    if conn.in_transaction:
        conn.execute("commit")


def dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def loads(text: str | None, default: Any = None) -> Any:
    if text is None or text == "":
        return default
    return json.loads(text)
