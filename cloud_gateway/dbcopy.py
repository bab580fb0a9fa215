"""``cloud-gateway db copy``: move a gateway's state from one database to another.

The way from one replica on SQLite to several on PostgreSQL (docs/deploy.md, section
3.0): stop the gateway, copy, start the replicas on the new URL. Every table of
:mod:`cloud_gateway.schema` is copied row for row (registry, fleet, enrolments, desired
state and its sequence counter, rollouts with their agents and history), so agents keep
their identities, their desired documents' sequence numbers only grow, and rollouts keep
their history. Both databases are first brought to this gateway's schema; the
destination must be empty (a copy never merges). The source is read in one transaction
and the destination written in one, so a failed copy leaves it empty.

Not in the database, so not copied: bundle blobs (move the blob directory to the shared
volume) and the desired-state signing key (the replicas need the same key the agents
already trust).
"""

from __future__ import annotations

import logging
from typing import Any

from cloud_gateway.db import Database, open_database, redact
from cloud_gateway.schema import TABLES
from models.errors import Conflict, InvalidInput

log = logging.getLogger(__name__)

BATCH = 1000  # rows per executemany


def copy_database(source: Database, dest: Database) -> dict[str, int]:
    """Copy every gateway table from ``source`` into the empty ``dest``; rows per table."""
    busy = {name: n for name in TABLES if (n := _count(dest, name))}
    if busy:
        raise Conflict(
            "the destination database is not empty ("
            + ", ".join(f"{name}: {n} rows" for name, n in busy.items())
            + "): a copy never merges; point --to at a new database"
        )
    copied: dict[str, int] = {}
    with source.transaction(), dest.transaction():
        for name, spec in TABLES.items():
            columns = list(spec.columns)
            rows = list(source.query(f"select {', '.join(_q(c) for c in columns)} from {name}"))
            for start in range(0, len(rows), BATCH):
                dest.table(name).insert_all(rows[start : start + BATCH])
            copied[name] = n = len(rows)
            if spec.serial is not None and dest.dialect == "postgresql" and n:
                # Explicit ids were inserted: the identity must continue after them.
                dest.execute(
                    f"select setval(pg_get_serial_sequence('{name}', '{spec.serial}'), "
                    f"(select max({_q(spec.serial)}) from {name}))"
                )
    return copied


def copy_urls(source_url: str, dest_url: str) -> dict[str, int]:
    """Open both (each migrated to this gateway's schema), copy, close."""
    if source_url == dest_url:
        raise InvalidInput("--from and --to are the same database")
    source = open_database(source_url)
    try:
        dest = open_database(dest_url)
        try:
            copied = copy_database(source, dest)
        finally:
            dest.close()
    finally:
        source.close()
    log.info(
        "copied %d rows from %s to %s", sum(copied.values()), redact(source_url), redact(dest_url)
    )
    return copied


def _count(db: Database, table: str) -> int:
    row: Any = db.execute(f"select count(*) from {table}").fetchone()
    return int(row[0])


def _q(column: str) -> str:
    return f'"{column}"'  # "values" is an SQL keyword
