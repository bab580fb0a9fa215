"""``cloud-gateway db copy``: a gateway's SQLite state moved to a real PostgreSQL server
(and back, in the PostgreSQL pass), row for row, and a gateway on the copy carries on
(rollout history, desired-state sequence, event ids, enrolled identities)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cloud_gateway.auth import token_digest
from cloud_gateway.cli import main
from cloud_gateway.db import open_database
from cloud_gateway.enrolment import Enrolments, Identity
from cloud_gateway.schema import TABLES
from cloud_gateway.schemas import RolloutRequest
from tests.cloud_gateway.clocked import beat, make_engine, wave_one_baking
from tests.cloud_gateway.postgres import postgres_server


@pytest.fixture
def other_database(db_url: str, tmp_path: Path) -> Iterator[str]:
    """An empty database of the other kind than the suite's: a PostgreSQL server of our
    own in the main (SQLite) pass, a new SQLite file in the PostgreSQL pass."""
    if db_url.startswith("sqlite"):
        with postgres_server() as url:
            yield url
    else:
        yield f"sqlite:///{tmp_path / 'copy.sqlite'}"


def _dump(url: str) -> dict[str, list[Any]]:
    db = open_database(url)
    try:
        return {
            name: sorted(
                (json.dumps(r, sort_keys=True) for r in db.query(f"select * from {name}")),
            )
            for name in TABLES
        }
    finally:
        db.close()


async def test_copy_to_the_other_database_and_carry_on(
    clocked: Any, db_url: str, other_database: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Main pass: SQLite -> PostgreSQL (the migration users make); PostgreSQL pass: back."""
    engine, clock, _ = clocked
    source = db_url
    rid = await wave_one_baking(engine, clock)  # a running rollout with history
    engine.rollback("motion-edge", rid, reason="operator")
    token = Enrolments(engine.db).enrol("e0", "s")
    before = _dump(source)
    assert before["events"] and before["desired"] and before["counters"]

    assert main(["db", "copy", "--from", source, "--to", other_database]) == 0
    out = capsys.readouterr()
    assert "rolled" not in out.err and f"events\t{len(before['events'])}" in out.out
    assert _dump(other_database) == before  # every table, every row

    # A gateway on the copy carries on where the SQLite one was.
    dest = open_database(other_database)
    try:
        moved = make_engine(dest, engine.registry, clock, [])
        old = moved.get(rid)
        assert old["state"] == "rolled_back" and old["reason"] == "manual rollback: operator"
        # The agent's identity came along: its token still authenticates it.
        assert Enrolments(dest).by_token_digest(token_digest(token)) == Identity("e0", "s")
        last_event = dest.execute("select max(id) from events").fetchone()[0]
        seq_before = dest.execute("select value from counters").fetchone()[0]
        for i in range(4):
            beat(moved, f"e{i}", 1, 4.0, 3000)
        req = RolloutRequest(model="motion-edge", version=2, waves=["100%"], bake_s=1.0)
        new = moved.start(req)["id"]
        await moved.tick()
        assert [e["kind"] for e in moved.get(new)["events"]] == ["started", "wave-issued"]
        first = dest.execute("select min(id) from events where rollout_id = ?", [new]).fetchone()
        assert first[0] > last_event  # the identity continued after the copied ids
        assert dest.execute("select value from counters").fetchone()[0] > seq_before
    finally:
        dest.close()

    # Never merges: a second copy into the same database changes nothing.
    after = _dump(other_database)
    assert main(["db", "copy", "--from", source, "--to", other_database]) == 1
    assert "the destination database is not empty" in capsys.readouterr().err
    assert _dump(other_database) == after


def test_copy_refuses_the_same_database(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path / 'a.sqlite'}"
    assert main(["db", "copy", "--from", url, "--to", url]) == 1
    assert "same database" in capsys.readouterr().err
