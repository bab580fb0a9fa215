"""Schema migrations (cloud_gateway/schema.py) on SQLite, and on PostgreSQL with
EDGECLOUD_TEST_DATABASE=postgresql: a database one migration behind is brought forward,
one ahead of the code is refused, reopening changes nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from cloud_gateway.db import DatabaseError, open_database
from cloud_gateway.schema import MIGRATIONS, current_version


def test_migrations_bring_an_older_database_forward_and_refuse_a_newer(
    tmp_path: Path, database_url: str | None
) -> None:
    url = database_url or f"sqlite:///{tmp_path / 'gw.sqlite'}"
    db = open_database(url)
    assert current_version(db) == len(MIGRATIONS) >= 2
    # As a gateway before migration 2 left it.
    db.execute("alter table agents drop column reported_ts")
    db.execute("delete from schema_version where version = 2")
    db.close()

    db = open_database(url)
    assert current_version(db) == len(MIGRATIONS)
    db.execute(
        "insert into agents (agent_id, reported_ts) values (?, ?)", ["a", 1.5]
    )  # the column is back
    db.execute("insert into schema_version (version, applied_at) values (99, 0)")
    db.close()

    with pytest.raises(DatabaseError, match="newer than this gateway"):
        open_database(url)
