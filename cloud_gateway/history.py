"""Rollout history: the JSON views of rollouts, their agents and their event log."""

from __future__ import annotations

from typing import Any

from cloud_gateway.db import Database, dumps, loads
from cloud_gateway.schemas import Gates, Selector
from models.errors import NotFound

_AGENT_FIELDS = (
    "agent_id",
    "wave",
    "previous_version",
    "state",
    "reason",
    "issued_at",
    "converged_at",
)


def rollout_row(db: Database, rid: str) -> dict[str, Any]:
    rows = list(db.table("rollouts").rows_where("id = ?", [rid], limit=1))
    if not rows:
        raise NotFound(f"no rollout {rid!r}")
    return rows[0]


def rollout_view(db: Database, rid: str, *, detail: bool = True) -> dict[str, Any]:
    """A rollout as the API shows it (waves and agent waves counted from 1)."""
    row = rollout_row(db, rid)
    wave_count = db.execute(
        "select max(wave) + 1 from rollout_agents where rollout_id = ?", [rid]
    ).fetchone()[0]
    out: dict[str, Any] = {
        "id": rid,
        "kind": row.get("kind") or "model",
        "model": row["model"] or "",
        "version": row["version"],
        "config": loads(row.get("config")),
        "strategy": row["strategy"],
        "waves": loads(row["waves"], []),
        "selector": Selector.model_validate_json(row["selector"]).model_dump(),
        "gates": Gates.model_validate_json(row["gates"]).model_dump(),
        "bake_s": row["bake_s"],
        "wave_timeout_s": row["wave_timeout_s"],
        "state": row["state"],
        "current_wave": row["current_wave"] + 1,
        "wave_count": wave_count or 0,
        "reason": row["reason"],
        "created_at": row["created_at"],
        "updated_at": row["updated_at"],
        "finished_at": row["finished_at"],
    }
    if detail:
        out["agents"] = [
            {k: a[k] for k in _AGENT_FIELDS} | {"wave": a["wave"] + 1}
            for a in db.table("rollout_agents").rows_where(
                "rollout_id = ?", [rid], order_by="wave, agent_id"
            )
        ]
        out["events"] = [
            {"ts": e["ts"], "kind": e["kind"], "detail": loads(e["detail"], {})}
            for e in db.table("events").rows_where("rollout_id = ?", [rid], order_by="id")
        ]
    return out


def list_rollouts(db: Database, model: str | None = None) -> list[dict[str, Any]]:
    where, args = ("model = ?", [model]) if model else (None, [])
    return [
        rollout_view(db, r["id"], detail=False)
        for r in db.table("rollouts").rows_where(where, args, order_by="created_at desc")
    ]


def record_event(
    db: Database, ts: float, rid: str | None, kind: str, detail: dict[str, Any]
) -> None:
    db.table("events").insert({"ts": ts, "rollout_id": rid, "kind": kind, "detail": dumps(detail)})


def with_gate(db: Database, view: dict[str, Any], live: dict[str, Any] | None) -> dict[str, Any]:
    """Add the gate evaluation to a rollout view: the live one of a running rollout, else
    the one recorded when the last wave passed or the rollout was rolled back."""
    gate = live
    if gate is None:
        for e in db.query(
            "select detail from events where rollout_id = ? and kind in "
            "('wave-passed', 'rolled-back') order by id desc",
            [view["id"]],
        ):
            gate = loads(e["detail"], {}).get("gate")
            if gate is not None:  # a manual rollback records none
                break
    view["gate"] = gate
    verdicts = gate["verdicts"] if gate else {}
    for a in view.get("agents") or []:
        a["gate"] = verdicts.get(a["agent_id"])
    return view
