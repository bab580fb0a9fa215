"""Per-agent desired state: the rows in SQLite and their signed, retained MQTT messages.

The message on ``fleet/{agent}/desired`` is ``bus.desired.SignedDesired``: the
``Desired`` document signed with the gateway's own ed25519 key, carrying a sequence
number from a counter persisted in the gateway database (``counters``), so every
document the gateway ever signs is newer than the ones before it, across restarts.
``sha256``/``url`` are null only for a rollback to a version the registry no longer
holds (agents keep their last versions locally).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bus.desired import Desired, WantedConfig, WantedModel, sign_desired
from bus.topics import Topics
from cloud_gateway.config import configured_agents, wanted_configs
from cloud_gateway.db import Database, chunks, dumps, next_counter, transaction

Publish = Callable[[str, bytes], None]

SEQUENCE = "desired-sequence"

_COLUMNS = (
    "agent_id",
    "model",
    "version",
    "sha256",
    "url",
    "rollback",
    "topics",
    "state",
    "rollout_id",
    "issued_at",
)
# Plain SQL (sqlite-utils' upsert introspects the table per call); columns it does not
# name are left alone.
_UPSERT = (
    f"insert into desired ({', '.join(_COLUMNS)}) values ({', '.join('?' * len(_COLUMNS))}) "
    "on conflict(agent_id, model) do update set "
    + ", ".join(f"{c} = excluded.{c}" for c in _COLUMNS[2:])
)


def next_sequence(db: Database, count: int = 1) -> int:
    """The last of ``count`` new desired-state sequence numbers: the persisted counter plus
    ``count``, the first never below the wall clock in milliseconds, so a gateway whose
    database was restored from a backup (or replaced) still signs documents newer than
    those its agents accepted."""
    return next_counter(db, SEQUENCE, floor=int(time.time() * 1000), count=count)


_IN = "agent_id in (select value from json_each(?))"


class DesiredState:
    """The ``desired`` rows and their documents. Inside :meth:`batch` every write is one
    transaction and each touched agent gets one document, built for all of them at once
    when the batch ends (a block of sequence numbers, one query for the rows, one for
    the configs): a wave of 10,000 agents is a few statements, not tens of thousands of
    round trips to PostgreSQL."""

    def __init__(
        self,
        db: Database,
        topics: Topics,
        publish: Publish,
        base_url: Callable[[], str],
        signing_key: Ed25519PrivateKey | None = None,
    ) -> None:
        self.db = db
        self.topics = topics
        self.publish = publish
        self.base_url = base_url
        # None only where an engine is built without a gateway (unit tests): an ephemeral
        # key that no agent trusts.
        self.key = signing_key or Ed25519PrivateKey.generate()
        # agent -> (rollout id, issued at) of the documents the open batch will send
        self._pending: dict[str, tuple[str | None, float]] | None = None

    def set(
        self,
        agent_id: str,
        model: str,
        version: dict[str, Any],
        rid: str | None,
        now: float,
        *,
        rollback: bool = False,
        topics: str | None = None,
    ) -> None:
        """Ask ``agent_id`` to run ``version`` (a registry row, or {"version": n})."""
        self.set_many([agent_id], model, version, rid, now, rollback=rollback, topics=topics)

    def set_many(
        self,
        agent_ids: list[str],
        model: str,
        version: dict[str, Any],
        rid: str | None,
        now: float,
        *,
        rollback: bool = False,
        topics: str | None = None,
    ) -> None:
        """Ask every agent of ``agent_ids`` to run ``version``. A version below the one
        desired before is marked as a rollback (agents refuse an unmarked downgrade)."""
        url = None
        if version.get("sha256"):
            url = f"{self.base_url()}/api/v1/models/{model}/versions/{version['version']}/bundle"
        before: dict[str, int] = {}
        for part in chunks(agent_ids):
            before.update(
                self.db.execute(
                    f"select agent_id, version from desired where model = ? and {_IN}",
                    [model, dumps(part)],
                ).fetchall()
            )
        with self.batch():
            self.db.executemany(
                _UPSERT,
                [
                    [
                        agent_id,
                        model,
                        version["version"],
                        version.get("sha256"),
                        url,
                        int(rollback or before.get(agent_id, -1) > version["version"]),
                        topics,
                        "serving",
                        rid,
                        now,
                    ]
                    for agent_id in agent_ids
                ],
            )
            for agent_id in agent_ids:
                self.publish_agent(agent_id, rid, now)

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """Many :meth:`set`/:meth:`remove` calls as one transaction, their documents built
        inside it and sent after it committed: no agent ever acts on a document (or a
        sequence number) the database then rolled back. Nested use joins the outer."""
        if self._pending is not None:
            yield
            return
        self._pending = {}
        messages: list[tuple[str, bytes]] = []
        try:
            with transaction(self.db):
                yield
                messages = self._documents(self._pending)
        finally:
            self._pending = None
        for topic, payload in messages:
            self.publish(topic, payload)

    def remove(self, agent_id: str, model: str, rid: str | None, now: float) -> None:
        self.remove_many([agent_id], model, rid, now)

    def remove_many(self, agent_ids: list[str], model: str, rid: str | None, now: float) -> None:
        """Ask each agent to stop serving ``model`` (``state: absent``; an agent that no
        longer serves it ignores that). The rows stay so the retained message keeps saying
        so after a broker restart."""
        with self.batch():
            self.db.executemany(
                "update desired set state = 'absent', rollout_id = ?, issued_at = ? "
                "where agent_id = ? and model = ?",
                [[rid, now, agent_id, model] for agent_id in agent_ids],
            )
            for agent_id in agent_ids:
                self.publish_agent(agent_id, rid, now)

    def message(self, agent_id: str, rid: str | None, now: float) -> Desired:
        """The desired-state document of ``agent_id`` as its rows stand, with a new
        sequence number."""
        return self._build({agent_id: (rid, now)})[0]

    def _build(self, items: dict[str, tuple[str | None, float]]) -> list[Desired]:
        ids = list(items)
        if not ids:
            return []
        first = next_sequence(self.db, len(ids)) - len(ids) + 1
        models: dict[str, dict[str, WantedModel]] = {a: {} for a in ids}
        configs: dict[str, WantedConfig] = {}
        for part in chunks(ids):
            for r in self.db.query(f"select * from desired where {_IN}", [dumps(part)]):
                models[r["agent_id"]][r["model"]] = WantedModel(
                    version=r["version"],
                    sha256=r["sha256"],
                    url=r["url"],
                    rollback=bool(r.get("rollback")),
                    topics=r.get("topics"),
                    state=r.get("state") or "serving",
                )
            configs.update(wanted_configs(self.db, part))
        return [
            Desired(
                target=agent_id,
                target_kind="agent",
                sequence=first + i,
                rollout_id=items[agent_id][0],
                models=models[agent_id],
                issued_at=float(items[agent_id][1]),
                config=configs.get(agent_id),
            )
            for i, agent_id in enumerate(ids)
        ]

    def _documents(self, items: dict[str, tuple[str | None, float]]) -> list[tuple[str, bytes]]:
        return [
            (self.topics.desired(doc.target), sign_desired(doc, self.key))
            for doc in self._build(items)
        ]

    def publish_agent(self, agent_id: str, rid: str | None, now: float) -> None:
        """Send ``agent_id`` its document as its rows stand (at the end of the open batch)."""
        if self._pending is not None:
            self._pending[agent_id] = (rid, now)
            return
        with self.batch():
            self.publish_agent(agent_id, rid, now)

    def republish_all(self) -> int:
        """Re-assert every agent's desired state (after a broker lost its retained store,
        or when this replica takes over the rollout engine)."""
        last: dict[str, tuple[str | None, float]] = {}
        for agent_id, rid, issued_at in self.db.execute(
            "select agent_id, rollout_id, issued_at from desired order by coalesce(issued_at, 0)"
        ).fetchall():
            last[agent_id] = (rid, issued_at)  # the newest row of each agent wins
        # Agents with a config twin and no model assigned by the gateway.
        now = time.time()
        for agent_id in configured_agents(self.db):
            last.setdefault(agent_id, (None, now))
        with self.batch():
            for agent_id, (rid, issued_at) in last.items():
                self.publish_agent(agent_id, rid, issued_at)
        return len(last)

    def versions(self, model: str) -> dict[str, int]:
        """agent -> desired version of ``model``."""
        return {
            r["agent_id"]: r["version"]
            for r in self.db.table("desired").rows_where(
                "model = ? and coalesce(state, 'serving') = 'serving'", [model]
            )
        }

    def of(self, agent_id: str) -> dict[str, int]:
        """model -> desired version on ``agent_id``."""
        return {
            r["model"]: r["version"]
            for r in self.db.table("desired").rows_where(
                "agent_id = ? and coalesce(state, 'serving') = 'serving'", [agent_id]
            )
        }
