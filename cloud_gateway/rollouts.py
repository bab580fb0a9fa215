"""The rollout engine: persists rollouts in SQLite, drives them with :mod:`canary`, and
writes per-agent desired state as retained MQTT messages.

Every decision is re-derived from the database and the latest heartbeats on each tick,
so a gateway restarted mid-rollout simply carries on where the rows say it was. The
latest gate evaluation of a running rollout is kept in memory for the API; the one that
passed a wave or failed the rollout is recorded in its history.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bus.topics import Topics
from cloud_gateway import canary, gates, history
from cloud_gateway import config as twin
from cloud_gateway.db import Database, dumps, loads, next_counter
from cloud_gateway.desired import DesiredState
from cloud_gateway.fleet import Fleet, serving_version
from cloud_gateway.registry import Registry
from cloud_gateway.schemas import ConfigRolloutRequest, RolloutRequest
from models.errors import Conflict, NotFound

log = logging.getLogger(__name__)


class RolloutEngine:
    """Starts, advances, rolls back and reports rollouts."""

    def __init__(
        self,
        db: Database,
        registry: Registry,
        fleet: Fleet,
        topics: Topics,
        publish: Callable[[str, bytes], None],
        base_url: Callable[[], str],
        *,
        wave_timeout_s: float = 300.0,
        signing_key: Ed25519PrivateKey | None = None,
        cloud_load: Callable[[str, int], Awaitable[str]] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.db = db
        self.registry = registry
        self.fleet = fleet
        self.desired = DesiredState(db, topics, publish, base_url, signing_key)
        #: The configuration twin (desired live settings), published with the models.
        self.config = twin.ConfigTwins(db, fleet, self.desired, clock)
        self.wave_timeout_s = wave_timeout_s
        self.cloud_load = cloud_load
        self.clock = clock
        self._background: set[asyncio.Task[None]] = set()
        self._gates: dict[str, dict[str, Any]] = {}  # rollout id -> latest GateReport dict
        # rollout id -> agent -> (row fields, parsed): see _observe and _baselines
        self._obs_cache: dict[str, dict[str, tuple[tuple[Any, ...], gates.Observation]]] = {}
        self._base_cache: dict[str, dict[str, tuple[str | None, gates.Baseline]]] = {}

    # -- commands --------------------------------------------------------------------

    def start(self, req: RolloutRequest) -> dict[str, Any]:
        self.registry.get(req.model, req.version)
        for row in self.db.query(
            "select id from rollouts where model = ? and state = 'running'", [req.model]
        ):
            raise Conflict(f"rollout {row['id']} of {req.model} is still running")
        targets = self.fleet.select(req.selector)
        plan = canary.plan_waves([r["agent_id"] for r in targets], req.waves, req.strategy)
        now = self.clock()
        rid = f"ro-{time.strftime('%Y%m%d-%H%M%S', time.gmtime(now))}-{secrets.token_hex(3)}"
        desired = self.desired.versions(req.model)
        self.db.table("rollouts").insert(
            {
                "id": rid,
                "model": req.model,
                "version": req.version,
                "strategy": req.strategy,
                "waves": dumps(req.waves if req.strategy == "canary" else ["100%"]),
                "selector": req.selector.model_dump_json(),
                "topics": req.topics,
                "gates": req.gates.model_dump_json(),
                "bake_s": req.bake_s,
                "wave_timeout_s": req.wave_timeout_s or self.wave_timeout_s,
                "state": "running",
                "current_wave": -1,
                "wave_started_at": None,
                "wave_converged_at": None,
                "reason": None,
                "cloud": None,
                "created_at": now,
                "updated_at": now,
                "finished_at": None,
            }
        )
        by_id = {r["agent_id"]: r for r in targets}
        self.db.table("rollout_agents").insert_all(
            {
                "rollout_id": rid,
                "agent_id": agent_id,
                "wave": index,
                "previous_version": desired.get(
                    agent_id, serving_version(by_id[agent_id], req.model)
                ),
                "state": "pending",
                "baseline": None,
                "issued_at": None,
                "converged_at": None,
                "reason": None,
            }
            for index, wave in enumerate(plan)
            for agent_id in wave
        )
        self._event(rid, "started", {"targets": len(targets), "waves": [len(w) for w in plan]})
        return self.get(rid)

    def start_config(self, req: ConfigRolloutRequest) -> dict[str, Any]:
        """Roll live settings out in waves: the agents of a wave get one new config
        version; the gates judge them as they judge a model's canaries (a refused config
        is a failed update) and a failure puts every touched agent back on its previous
        config."""
        for row in self.db.query(
            "select id from rollouts where kind = 'config' and state = 'running'"
        ):
            raise Conflict(f"config rollout {row['id']} is still running")
        targets = self.fleet.select(req.selector)
        plan = canary.plan_waves([r["agent_id"] for r in targets], req.waves, req.strategy)
        now = self.clock()
        rid = f"ro-{time.strftime('%Y%m%d-%H%M%S', time.gmtime(now))}-{secrets.token_hex(3)}"
        self.db.table("rollouts").insert(
            {
                "id": rid,
                "kind": "config",
                "model": None,
                "version": next_counter(self.db, twin.VERSION),
                "config": dumps(req.values),
                "strategy": req.strategy,
                "waves": dumps(req.waves if req.strategy == "canary" else ["100%"]),
                "selector": req.selector.model_dump_json(),
                "topics": None,
                "gates": req.gates.model_dump_json(),
                "bake_s": req.bake_s,
                "wave_timeout_s": req.wave_timeout_s or self.wave_timeout_s,
                "state": "running",
                "current_wave": -1,
                "wave_started_at": None,
                "wave_converged_at": None,
                "reason": None,
                "cloud": None,
                "created_at": now,
                "updated_at": now,
                "finished_at": None,
            }
        )
        rows = []
        for index, wave in enumerate(plan):
            for agent_id in wave:
                before = twin.wanted_config(self.db, agent_id)
                rows.append(
                    {
                        "rollout_id": rid,
                        "agent_id": agent_id,
                        "wave": index,
                        "previous_version": before.version if before else None,
                        "previous_config": dumps(before.values) if before else None,
                        "state": "pending",
                        "baseline": None,
                        "issued_at": None,
                        "converged_at": None,
                        "reason": None,
                    }
                )
        self.db.table("rollout_agents").insert_all(rows)
        self._event(rid, "started", {"targets": len(targets), "waves": [len(w) for w in plan]})
        return self.get(rid)

    def assign(self, agent_id: str, model: str, version: int, topics: str | None) -> dict[str, int]:
        """Serve ``model:version`` on one agent now (add it, move its topics, or change its
        version outside a rollout); returns the agent's desired versions."""
        row = self.registry.get(model, version)
        self.fleet.get(agent_id)
        self._no_rollout_of(model)
        now = self.clock()
        self.desired.set(agent_id, model, row, None, now, topics=topics)
        self._event(
            None,
            "assigned",
            {"agent": agent_id, "model": model, "version": version, "topics": topics},
        )
        return self.desired.of(agent_id)

    def unassign(self, agent_id: str, model: str) -> dict[str, int]:
        """Stop serving ``model`` on one agent."""
        self.fleet.get(agent_id)
        self._no_rollout_of(model)
        if model not in self.desired.of(agent_id):
            raise NotFound(f"the gateway does not assign {model} to {agent_id}")
        self.desired.remove(agent_id, model, None, self.clock())
        self._event(None, "unassigned", {"agent": agent_id, "model": model})
        return self.desired.of(agent_id)

    def _no_rollout_of(self, model: str) -> None:
        for row in self.db.query(
            "select id from rollouts where model = ? and state = 'running'", [model]
        ):
            raise Conflict(f"rollout {row['id']} of {model} is running: wait or roll it back")

    def rollback(
        self, model: str, rollout_id: str | None = None, reason: str = "manual"
    ) -> dict[str, Any]:
        """Put every agent a rollout touched back on its previous version."""
        if rollout_id is None:
            rows = list(
                self.db.query(
                    "select id from rollouts where model = ? order by created_at desc limit 1",
                    [model],
                )
            )
            if not rows:
                raise NotFound(f"no rollout of {model} to roll back")
            rollout_id = rows[0]["id"]
        row = history.rollout_row(self.db, rollout_id)
        if (row["model"] or "") != model:
            raise Conflict(f"rollout {rollout_id} is of {row['model']}, not {model}")
        if row["state"] == "rolled_back":
            raise Conflict(f"rollout {rollout_id} is already rolled back")
        # The agents it touched are read inside the rollback's transaction, after it has
        # claimed the rollout: a wave the leader issued meanwhile is rolled back too.
        self._rollback(row, None, f"manual rollback: {reason}" if reason != "manual" else reason)
        return self.get(rollout_id)

    # -- the engine loop -------------------------------------------------------------

    async def tick(self) -> None:
        for row in list(self.db.query("select * from rollouts where state = 'running'")):
            try:
                await self._advance(row)
            except Conflict as exc:  # e.g. rolled back through another replica meanwhile
                log.info("rollout %s: decision dropped: %s", row["id"], exc)
            except Exception:
                log.exception("rollout %s: tick failed; will retry", row["id"])

    async def _advance(self, row: dict[str, Any]) -> None:
        rid = row["id"]
        agents = list(self.db.table("rollout_agents").rows_where("rollout_id = ?", [rid]))
        plan = canary.Plan.of_rows(row, agents)
        observations = self._observe(row)
        now = self.clock()
        with self.desired.batch():
            agents = self._note_converged(rid, row["version"], agents, observations, now)
        baselines = self._baselines(rid, agents)
        report = canary.judge(plan, observations, baselines, now)
        gate = self._gates[rid] = report.as_dict(now)
        action = canary.step(plan, observations, baselines, now, report)
        # One transaction per decision: its history event and its effect commit together
        # (a replica taking over never sees one without the other).
        with self.desired.batch():
            self._act(row, plan, action, gate, now)

    def _act(
        self,
        row: dict[str, Any],
        plan: canary.Plan,
        action: canary.Action | None,
        gate: dict[str, Any],
        now: float,
    ) -> None:
        rid = row["id"]
        if isinstance(action, canary.Issue | canary.Succeed) and plan.current_wave >= 0:
            self._event(rid, "wave-passed", {"wave": plan.current_wave + 1, "gate": gate})
        if isinstance(action, canary.Issue):
            model_rollout = row.get("kind") != "config"
            if action.wave == 0 and self.cloud_load and row["cloud"] is None and model_rollout:
                # In the background: a slow cloud tier must not hold up the edge waves.
                self.db.table("rollouts").update(rid, {"cloud": "loading"})
                task = asyncio.create_task(self._load_cloud(rid, row["model"], row["version"]))
                self._background.add(task)
                task.add_done_callback(self._background.discard)
            self._issue(row, action.wave, action.agents, now)
        elif isinstance(action, canary.MarkConverged):
            self._update(rid, "running", wave_converged_at=now)
            self._event(rid, "wave-converged", {"wave": action.wave + 1})
        elif isinstance(action, canary.Fail):
            gate["failure"] = gate["failure"] or action.reason  # a timeout fails no gate
            self._rollback(row, action.rollback, action.reason, gate)
        elif isinstance(action, canary.Succeed):
            self._update(rid, "running", state="succeeded", finished_at=now)
            self._forget(rid)
            self._event(rid, "succeeded", {})
            log.info("rollout %s succeeded", rid)

    def _observe(self, row: dict[str, Any]) -> dict[str, gates.Observation]:
        """Every agent of the rollout as its latest heartbeat shows it. A tick is 0.5 s and
        a heartbeat interval ~10 s, so most rows have not changed since the last tick: only
        (online, beat) is read for all of them, and the rows that changed are read
        and parsed again (re-reading and re-parsing 10,000 rows per tick took most of the
        gateway's CPU during a rollout; docs/benchmarks.md). ``beat`` changes with every
        heartbeat written, ``online`` with a last will or the offline sweep."""
        rid = row["id"]
        cache = self._obs_cache.setdefault(rid, {})
        stamps = {
            agent_id: (online, beat)
            for agent_id, online, beat in self.db.execute(
                "select f.agent_id, f.online, f.beat "
                "from rollout_agents a join agents f on f.agent_id = a.agent_id "
                "where a.rollout_id = ?",
                [rid],
            )
        }
        changed = [
            a for a, stamp in stamps.items() if (hit := cache.get(a)) is None or hit[0] != stamp
        ]
        for start in range(0, len(changed), 5000):
            cur = self.db.execute(
                "select * from agents where agent_id in (select value from json_each(?))",
                [dumps(changed[start : start + 5000])],
            )
            names = [d[0] for d in cur.description]
            for values in cur:
                fleet_row = dict(zip(names, values, strict=True))
                stamp = (fleet_row["online"], fleet_row["beat"])
                cache[fleet_row["agent_id"]] = (stamp, self._observation(row, fleet_row))
        for gone in set(cache) - set(stamps):
            del cache[gone]
        return {agent_id: cache[agent_id][1] for agent_id in stamps if agent_id in cache}

    def _baselines(self, rid: str, agents: list[dict[str, Any]]) -> dict[str, gates.Baseline]:
        """Stored baselines, parsed once per change (same reason as :meth:`_observe`)."""
        cache = self._base_cache.setdefault(rid, {})
        out = {}
        for a in agents:
            text = a["baseline"]
            hit = cache.get(a["agent_id"])
            if hit is None or hit[0] != text:
                hit = cache[a["agent_id"]] = (text, gates.Baseline.load(loads(text)))
            out[a["agent_id"]] = hit[1]
        return out

    def reset(self) -> None:
        """Drop every cache (this replica just took over or lost the lead)."""
        self._gates.clear()
        self._obs_cache.clear()
        self._base_cache.clear()

    def _forget(self, rid: str) -> None:
        self._gates.pop(rid, None)
        self._obs_cache.pop(rid, None)
        self._base_cache.pop(rid, None)

    @staticmethod
    def _observation(row: dict[str, Any], fleet_row: dict[str, Any]) -> gates.Observation:
        if row.get("kind") == "config":
            return twin.observation(fleet_row, row["id"], row["version"])
        return gates.Observation.of_row(fleet_row, row["model"])

    async def _load_cloud(self, rid: str, model: str, version: int) -> None:
        assert self.cloud_load is not None
        status = await self.cloud_load(model, version)
        self.db.table("rollouts").update(rid, {"cloud": status})
        self._event(rid, "cloud", {"status": status})

    async def close(self) -> None:
        for task in list(self._background):
            task.cancel()
        for task in list(self._background):
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def _note_converged(
        self,
        rid: str,
        version: int,
        agents: list[dict[str, Any]],
        observations: dict[str, gates.Observation],
        now: float,
    ) -> list[dict[str, Any]]:
        """Mark agents now serving the new version; their error/latency window starts here."""
        out = []
        for a in agents:
            obs = observations.get(a["agent_id"])
            if a["state"] == "issued" and obs is not None and gates.converged(obs, version):
                base = gates.Baseline.load(loads(a["baseline"])).settle(obs.metrics)
                a = a | {"state": "updated", "converged_at": now, "baseline": _dump(base)}
                self.db.execute(
                    "update rollout_agents set state = ?, converged_at = ?, baseline = ? "
                    "where rollout_id = ? and agent_id = ?",
                    [a["state"], now, a["baseline"], rid, a["agent_id"]],
                )
            out.append(a)
        return out

    def _issue(self, row: dict[str, Any], wave: int, agent_ids: list[str], now: float) -> None:
        with self.desired.batch():
            self._issue_wave(row, wave, agent_ids, now)
        log.info("rollout %s: wave %d issued to %d agents", row["id"], wave + 1, len(agent_ids))

    def _issue_wave(self, row: dict[str, Any], wave: int, agent_ids: list[str], now: float) -> None:
        rid = row["id"]
        # First, inside the wave's transaction: move current_wave forward only from where
        # this tick read it. A replica that lost the lead mid-tick (or any second writer)
        # then changes nothing, so no wave is ever issued twice.
        claimed = self.db.execute(
            "update rollouts set current_wave = ?, wave_started_at = ?, "
            "wave_converged_at = null, updated_at = ? "
            "where id = ? and state = 'running' and current_wave = ?",
            [wave, now, self.clock(), rid, row["current_wave"]],
        )
        if claimed.rowcount != 1:
            raise Conflict(f"rollout {rid}: wave {wave + 1} was issued by another writer")
        is_config = row.get("kind") == "config"
        version = None if is_config else self.registry.get(row["model"], row["version"])
        # The agents not issued yet are the control group of this wave: their counters
        # now start the window their error rate is pooled over.
        metrics = {
            r[0]: r[1]
            for r in self.db.execute(
                "select a.agent_id, f.metrics from rollout_agents a "
                "left join agents f on f.agent_id = a.agent_id "
                "where a.rollout_id = ? and (a.wave > ? or a.agent_id in "
                "(select value from json_each(?)))",
                [rid, wave, dumps(agent_ids)],
            )
        }
        self.db.executemany(
            "update rollout_agents set baseline = ? where rollout_id = ? and agent_id = ?",
            [
                (_dump(gates.Baseline.of(gates.stored_metrics(text))), rid, agent_id)
                for agent_id, text in metrics.items()
            ],
        )
        self.db.executemany(
            "update rollout_agents set state = 'issued', issued_at = ? "
            "where rollout_id = ? and agent_id = ?",
            [(now, rid, agent_id) for agent_id in agent_ids],
        )
        if version is None:
            values = loads(row["config"], {})
            for agent_id in agent_ids:
                self.config.put(agent_id, values, rid, version=row["version"])
        else:
            self.desired.set_many(
                agent_ids, row["model"], version, rid, now, topics=row.get("topics")
            )
        self._event(rid, "wave-issued", {"wave": wave + 1, "agents": agent_ids})

    def _rollback(
        self,
        row: dict[str, Any],
        agent_ids: list[str] | None,
        reason: str,
        gate: dict[str, Any] | None = None,
    ) -> None:
        """``agent_ids`` None: every agent the rollout touched (read in the transaction)."""
        with self.desired.batch():
            n = self._roll_back(row, agent_ids, reason, gate)
        log.warning("rollout %s rolled back on %d agents: %s", row["id"], n, reason)

    def _roll_back(
        self,
        row: dict[str, Any],
        agent_ids: list[str] | None,
        reason: str,
        gate: dict[str, Any] | None,
    ) -> int:
        rid, model, now = row["id"], row["model"], self.clock()
        # First: claim the rollout in the state it was read in. A second writer (the
        # leader's tick against a manual rollback on another replica) then waits for this
        # row and finds it changed; whichever commits second changes nothing.
        self._update(rid, row["state"], state="rolled_back", reason=reason, finished_at=now)
        if agent_ids is None:
            agent_ids = [
                a["agent_id"]
                for a in self.db.query(
                    "select agent_id from rollout_agents "
                    "where rollout_id = ? and state != 'pending'",
                    [rid],
                )
            ]
        previous, previous_config = {}, {}
        for agent_id, version, config in self.db.execute(
            "select agent_id, previous_version, previous_config from rollout_agents "
            "where rollout_id = ?",
            [rid],
        ):
            previous[agent_id], previous_config[agent_id] = version, config
        if row.get("kind") == "config":
            # A new version (the agent may run this rollout's), the previous values.
            for agent_id in agent_ids:
                self.config.put(agent_id, loads(previous_config[agent_id]), rid)
        else:
            # One bulk write per previous version (a wave rolled back is usually one).
            by_version: dict[int | None, list[str]] = {}
            for agent_id in agent_ids:
                by_version.setdefault(previous[agent_id], []).append(agent_id)
            for prev, group in by_version.items():
                if prev is None:
                    self.desired.remove_many(group, model, rid, now)
                    continue
                # Not in the registry: the agent still has it locally (it keeps the last K).
                target = self.registry.find(model, prev) or {"version": prev, "sha256": None}
                self.desired.set_many(group, model, target, rid, now, rollback=True)
        self.db.executemany(
            "update rollout_agents set state = 'rolled_back', reason = ? "
            "where rollout_id = ? and agent_id = ?",
            [(reason, rid, agent_id) for agent_id in agent_ids],
        )
        self._forget(rid)
        detail: dict[str, Any] = {"reason": reason, "agents": agent_ids}
        self._event(rid, "rolled-back", detail | ({"gate": gate} if gate else {}))
        return len(agent_ids)

    # -- desired state and history ---------------------------------------------------

    def republish_all(self) -> int:
        return self.desired.republish_all()

    def desired_of(self, agent_id: str) -> dict[str, int]:
        return self.desired.of(agent_id)

    def get(self, rid: str, *, detail: bool = True) -> dict[str, Any]:
        view = history.rollout_view(self.db, rid, detail=detail)
        return history.with_gate(self.db, view, self._gates.get(rid))

    def list(self, model: str | None = None) -> list[dict[str, Any]]:
        return [
            history.with_gate(self.db, r, self._gates.get(r["id"]))
            for r in history.list_rollouts(self.db, model)
        ]

    def _update(self, rid: str, expect: str, **fields: Any) -> None:
        """Change a rollout that is still in state ``expect`` (Conflict otherwise: another
        writer got there first; the caller's transaction then changes nothing)."""
        fields = fields | {"updated_at": self.clock()}
        # Plain SQL: no sqlite-utils commit inside a DesiredState.batch() transaction.
        columns = ", ".join(f"{k} = ?" for k in fields)  # keys are this module's literals
        done = self.db.execute(
            f"update rollouts set {columns} where id = ? and state = ?",
            [*fields.values(), rid, expect],
        )
        if done.rowcount != 1:
            raise Conflict(f"rollout {rid} is no longer {expect}: changed by another writer")

    def _event(self, rid: str | None, kind: str, detail: dict[str, Any]) -> None:
        history.record_event(self.db, self.clock(), rid, kind, detail)


_BASELINE_FIELDS = tuple(f.name for f in dataclasses.fields(gates.Baseline))


def _dump(base: gates.Baseline) -> str:
    # Not dataclasses.asdict (a deep copy per field): this runs for every agent of a wave.
    return dumps({name: getattr(base, name) for name in _BASELINE_FIELDS})
