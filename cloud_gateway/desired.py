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

from bus.desired import Desired, WantedModel, sign_desired
from bus.topics import Topics
from cloud_gateway.config import configured_agents, wanted_config
from cloud_gateway.db import Database, next_counter, transaction

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


def next_sequence(db: Database) -> int:
    """The next desired-state sequence number: the persisted counter plus one, but never
    below the wall clock in milliseconds, so a gateway whose database was restored from
    a backup (or replaced) still signs documents newer than those its agents accepted."""
    return next_counter(db, SEQUENCE, floor=int(time.time() * 1000))


class DesiredState:
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
        """Ask ``agent_id`` to run ``version`` (a registry row, or {"version": n}).

        A version below the one desired before is marked as a rollback (agents refuse
        an unmarked downgrade)."""
        url = None
        if version.get("sha256"):
            url = f"{self.base_url()}/api/v1/models/{model}/versions/{version['version']}/bundle"
        before = self.db.execute(
            "select version from desired where agent_id = ? and model = ?", [agent_id, model]
        ).fetchone()
        rollback = rollback or (before is not None and before[0] > version["version"])
        values = [
            agent_id,
            model,
            version["version"],
            version.get("sha256"),
            url,
            int(rollback),
            topics,
            "serving",
            rid,
            now,
        ]
        self.db.execute(_UPSERT, values)
        self.publish_agent(agent_id, rid, now)

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """Many :meth:`set`/:meth:`remove` calls as one transaction, their messages sent
        after it committed: a wave of thousands of agents is one commit, and no agent
        ever acts on a document (or sequence number) the database then rolled back."""
        queued: list[tuple[str, bytes]] = []
        send, self.publish = self.publish, lambda topic, payload: queued.append((topic, payload))
        try:
            with transaction(self.db):
                yield
        finally:
            self.publish = send
        for topic, payload in queued:
            send(topic, payload)

    def remove(self, agent_id: str, model: str, rid: str | None, now: float) -> None:
        """Ask ``agent_id`` to stop serving ``model`` (``state: absent``; an agent that no
        longer serves it ignores that). The row stays so the retained message keeps saying
        so after a broker restart."""
        self.db.execute(
            "update desired set state = 'absent', rollout_id = ?, issued_at = ? "
            "where agent_id = ? and model = ?",
            [rid, now, agent_id, model],
        )
        self.publish_agent(agent_id, rid, now)

    def message(self, agent_id: str, rid: str | None, now: float) -> Desired:
        """The desired-state document of ``agent_id`` as its rows stand, with a new
        sequence number."""
        rows = self.db.table("desired").rows_where("agent_id = ?", [agent_id])
        models = {
            r["model"]: WantedModel(
                version=r["version"],
                sha256=r["sha256"],
                url=r["url"],
                rollback=bool(r.get("rollback")),
                topics=r.get("topics"),
                state=r.get("state") or "serving",
            )
            for r in rows
        }
        return Desired(
            target=agent_id,
            target_kind="agent",
            sequence=next_sequence(self.db),
            rollout_id=rid,
            models=models,
            issued_at=float(now),
            config=wanted_config(self.db, agent_id),
        )

    def publish_agent(self, agent_id: str, rid: str | None, now: float) -> None:
        document = self.message(agent_id, rid, now)
        self.publish(self.topics.desired(agent_id), sign_desired(document, self.key))

    def republish_all(self) -> int:
        """Re-assert every agent's desired state (after a broker lost its retained store)."""
        agents = [r["agent_id"] for r in self.db.query("select distinct agent_id from desired")]
        for agent_id in agents:
            last = self.db.execute(
                "select rollout_id, issued_at from desired where agent_id = ?"
                " order by issued_at desc limit 1",
                [agent_id],
            ).fetchone()
            self.publish_agent(agent_id, last[0], last[1])
        # Agents with a config twin and no model assigned by the gateway.
        config_only = [a for a in configured_agents(self.db) if a not in set(agents)]
        for agent_id in config_only:
            self.publish_agent(agent_id, None, time.time())
        agents += config_only
        return len(agents)

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
