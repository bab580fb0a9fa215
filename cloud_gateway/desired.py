"""Per-agent desired state: the rows in SQLite and their retained MQTT messages.

The message on ``fleet/{agent}/desired`` is ``offload.desired.Desired``, the same value
object the agent's updater parses. ``sha256``/``url`` are null only for a rollback to a
version the registry no longer holds (agents keep their last versions locally).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import sqlite_utils

from offload.desired import Desired, WantedModel
from offload.topics import Topics

Publish = Callable[[str, bytes], None]


class DesiredState:
    def __init__(
        self,
        db: sqlite_utils.Database,
        topics: Topics,
        publish: Publish,
        base_url: Callable[[], str],
    ) -> None:
        self.db = db
        self.topics = topics
        self.publish = publish
        self.base_url = base_url

    def set(self, agent_id: str, model: str, version: dict[str, Any], rid: str, now: float) -> None:
        """Ask ``agent_id`` to run ``version`` (a registry row, or {"version": n})."""
        url = None
        if version.get("sha256"):
            url = f"{self.base_url()}/api/v1/models/{model}/versions/{version['version']}/bundle"
        self.db.table("desired").upsert(
            {
                "agent_id": agent_id,
                "model": model,
                "version": version["version"],
                "sha256": version.get("sha256"),
                "url": url,
                "rollout_id": rid,
                "issued_at": now,
            },
            pk=("agent_id", "model"),
        )
        self.publish_agent(agent_id, rid, now)

    def remove(self, agent_id: str, model: str, rid: str, now: float) -> None:
        self.db.table("desired").delete_where("agent_id = ? and model = ?", [agent_id, model])
        self.publish_agent(agent_id, rid, now)

    def message(self, agent_id: str, rid: str | None, now: float) -> Desired:
        """The desired-state message of ``agent_id`` as its rows stand."""
        rows = self.db.table("desired").rows_where("agent_id = ?", [agent_id])
        models = {
            r["model"]: WantedModel(version=r["version"], sha256=r["sha256"], url=r["url"])
            for r in rows
        }
        return Desired(rollout_id=rid, models=models, issued_at=now)

    def publish_agent(self, agent_id: str, rid: str | None, now: float) -> None:
        self.publish(self.topics.desired(agent_id), self.message(agent_id, rid, now).to_bytes())

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
        return len(agents)

    def versions(self, model: str) -> dict[str, int]:
        """agent -> desired version of ``model``."""
        return {
            r["agent_id"]: r["version"]
            for r in self.db.table("desired").rows_where("model = ?", [model])
        }

    def of(self, agent_id: str) -> dict[str, int]:
        """model -> desired version on ``agent_id``."""
        return {
            r["model"]: r["version"]
            for r in self.db.table("desired").rows_where("agent_id = ?", [agent_id])
        }
