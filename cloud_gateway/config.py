"""The configuration twin on the gateway: desired live settings per agent, in SQLite.

An operator sets an agent's live settings (``PUT /api/v1/fleet/{agent}/config``, or
``PUT /api/v1/config`` for every agent a site/label selector matches); each change gets
a new config version from a persisted counter and is published at once in the agent's
signed desired-state document (``config`` section, :class:`bus.desired.WantedConfig`),
so the signature and the agent's sequence check cover it. The agent reports back in its
heartbeat (``config``: version, state, reason, effective values); :func:`view` puts the
two side by side for the API and the fleet page.

The gateway checks names and shapes only (:func:`bus.desired.check_live`): the agent's
settings model judges the values, so a refusal (``slo_ms: -5``) is reported by the one
that runs them, with its reason, and the agent keeps its previous configuration.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from bus.desired import UpdatePhase, UpdateState, WantedConfig, check_live
from cloud_gateway.db import Database, dumps, loads, next_counter
from cloud_gateway.gates import Observation, stored_metrics
from models.errors import Conflict, InvalidInput

if TYPE_CHECKING:
    from cloud_gateway.fleet import Fleet
    from cloud_gateway.schemas import Selector

VERSION = "config-version"
TABLE = "agent_config"


def wanted_config(db: Database, agent_id: str) -> WantedConfig | None:
    """The config section of ``agent_id``'s desired state (None: flags only)."""
    row = db.execute(
        f'select version, rollout_id, "values" from {TABLE} where agent_id = ?', [agent_id]
    ).fetchone()
    if row is None:
        return None
    return WantedConfig(version=row[0], rollout_id=row[1], values=loads(row[2], {}))


def wanted_configs(db: Database, agent_ids: list[str]) -> dict[str, WantedConfig]:
    """The config sections of ``agent_ids`` (at most a few thousand: one query)."""
    rows = db.execute(
        f'select agent_id, version, rollout_id, "values" from {TABLE} '
        "where agent_id in (select value from json_each(?))",
        [dumps(agent_ids)],
    ).fetchall()
    return {r[0]: WantedConfig(version=r[1], rollout_id=r[2], values=loads(r[3], {})) for r in rows}


def configured_agents(db: Database) -> list[str]:
    return [r[0] for r in db.execute(f"select agent_id from {TABLE}").fetchall()]


def view(agent_id: str, desired: WantedConfig | None, reported: Any) -> dict[str, Any]:
    """Desired vs reported config of one agent, with one word for where they stand."""
    rep = reported if isinstance(reported, dict) else None
    want = desired.model_dump(mode="json") if desired is not None else None
    want_version = desired.version if desired is not None else 0
    if rep is None:
        status = "unknown"  # the agent never reported a config (older agent, or offline)
    elif rep.get("state") == "failed" and rep.get("refused_version") == want_version:
        status = "refused"
    elif rep.get("version") == want_version:
        status = "in-sync"
    else:
        status = "pending"
    return {
        "agent_id": agent_id,
        "desired": want,
        "reported": rep,
        "status": status,
        "reason": rep.get("reason") if rep is not None and status == "refused" else None,
    }


class Publisher(Protocol):
    """What the twin needs of :class:`cloud_gateway.desired.DesiredState` (which reads
    this module's rows when it builds a document)."""

    def publish_agent(self, agent_id: str, rid: str | None, now: float) -> None: ...


def observation(row: dict[str, Any], rollout_id: str, version: int) -> Observation:
    """What a config rollout's gates see of one agent: its reported config version as the
    "version", and a refusal of this rollout's version as a failed update."""
    rep = loads(row.get("config")) or {}
    reported = rep.get("version") if isinstance(rep, dict) else None
    refused = isinstance(rep, dict) and rep.get("refused_version") == version
    update = (
        UpdateState(
            rollout_id=rollout_id,
            model="config",
            version=version,
            state=UpdatePhase.FAILED,
            reason=str(rep.get("reason") or "config refused"),
        )
        if refused and rep.get("state") == "failed"
        else None
    )
    return Observation(
        online=bool(row["online"]),
        version=reported if isinstance(reported, int) else None,
        update=update,
        metrics=stored_metrics(row["metrics"]),
        seen_at=row["last_seen"],
    )


class ConfigTwins:
    """Sets and reads desired configs; publishing goes through the desired state."""

    def __init__(
        self,
        db: Database,
        fleet: Fleet,
        desired: Publisher,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.db = db
        self.fleet = fleet
        self.desired = desired
        self.clock = clock

    def get(self, agent_id: str) -> dict[str, Any]:
        row = self.fleet.get(agent_id)
        return view(agent_id, wanted_config(self.db, agent_id), loads(row.get("config")))

    def set(
        self, agent_id: str, values: dict[str, Any], rollout_id: str | None = None
    ) -> dict[str, Any]:
        """Ask ``agent_id`` to run with ``values`` over its flags (replacing the previous
        overrides: a setting left out goes back to the agent's flag)."""
        self.fleet.get(agent_id)
        check_live(values)
        self._no_rollout([agent_id])
        self.put(agent_id, values, rollout_id)
        return self.get(agent_id)

    def _no_rollout(self, agent_ids: list[str]) -> None:
        """A config rollout owns its agents' configs until it ends (its rollback restores
        what it found, which a direct change in between would silently undo)."""
        marks = ",".join("?" * len(agent_ids))
        row = self.db.execute(
            "select r.id, a.agent_id from rollouts r join rollout_agents a on a.rollout_id = r.id "
            f"where r.kind = 'config' and r.state = 'running' and a.agent_id in ({marks}) limit 1",
            agent_ids,
        ).fetchone()
        if row is not None:
            raise Conflict(
                f"config rollout {row[0]} includes {row[1]}: wait for it or roll it back"
            )

    def put(
        self,
        agent_id: str,
        values: dict[str, Any] | None,
        rollout_id: str | None,
        version: int | None = None,
    ) -> None:
        """Store and publish (``values`` None: no config section, flags only); a config
        rollout passes the one ``version`` all its agents get."""
        now = self.clock()
        if values is None:
            self.db.execute(f"delete from {TABLE} where agent_id = ?", [agent_id])
        else:
            self.db.table(TABLE).upsert(
                {
                    "agent_id": agent_id,
                    "version": version if version is not None else next_counter(self.db, VERSION),
                    "values": dumps(values),
                    "rollout_id": rollout_id,
                    "set_at": now,
                }
            )
        self.desired.publish_agent(agent_id, rollout_id, now)

    def values_of(self, agent_id: str) -> dict[str, Any] | None:
        wanted = wanted_config(self.db, agent_id)
        return None if wanted is None else dict(wanted.values)

    def clear(self, agent_id: str) -> dict[str, Any]:
        """Back to the agent's flags."""
        self.fleet.get(agent_id)
        self._no_rollout([agent_id])
        self.put(agent_id, None, None)
        return self.get(agent_id)

    def set_selected(self, selector: Selector, values: dict[str, Any]) -> list[dict[str, Any]]:
        """The same overrides on every agent the selector matches (offline ones too: the
        retained document waits for them)."""
        check_live(values)
        rows = self.fleet.select(selector, online_only=False)
        if not rows:
            raise InvalidInput("the selector matches no agent")
        self._no_rollout([row["agent_id"] for row in rows])
        for row in rows:
            self.put(row["agent_id"], values, None)
        return [self.get(row["agent_id"]) for row in rows]
