"""The client subcommands of ``cloud-gateway`` (everything except ``serve``)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from typing import Any

from rich.console import Console
from rich.table import Table

from bus.topics import Topics
from cloud_gateway.client import GatewayClient
from cloud_gateway.settings import GatewaySettings
from models.bundle_cli import run_bundle_command
from models.errors import InvalidInput

_FINAL = ("succeeded", "rolled_back", "failed")


def _client(settings: GatewaySettings) -> GatewayClient:
    token = settings.token.get_secret_value() if settings.token else None
    return GatewayClient(settings.url, token)


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, sort_keys=True))


def _build(args: argparse.Namespace) -> int:
    from models import signing
    from models.recipes.build import build_all, build_model

    if args.name is None:
        result = build_all(args.out, version=args.model_version, variant=args.variant)
        for name, path in sorted(result.bundles.items()):
            print(f"{name}: {path}")
        print(f"public key: {result.public_key}")
        return 0
    key = args.key or args.out / "keys" / "dev.key"
    signing.ensure_key(key)
    path = build_model(args.name, args.model_version, args.out, key, variant=args.variant)
    print(path)
    return 0


def _models(args: argparse.Namespace, client: GatewayClient) -> int:
    if args.models_command == "push":
        for bundle in args.bundles:
            info = client.push(bundle)
            print(f"pushed {info['name']}:{info['version']} sha256={info['sha256'][:12]}")
        return 0
    if args.models_command == "delete":
        _print_json(
            client.request("DELETE", f"/api/v1/models/{args.name}/versions/{args.model_version}")
        )
        return 0
    table = Table("model", "version(s)", "latest/sha256", "in use")
    if args.name:
        for v in client.get(f"/api/v1/models/{args.name}/versions"):
            table.add_row(
                v["name"], str(v["version"]), v["sha256"][:16], "yes" if v["in_use"] else ""
            )
    else:
        for m in client.get("/api/v1/models"):
            table.add_row(m["name"], ",".join(map(str, m["versions"])), str(m["latest"]), "")
    Console(width=120).print(table)
    return 0


def _show_rollout(r: dict[str, Any]) -> None:
    print(
        f"{r['id']}  {r['model']}:{r['version']}  {r['strategy']}  state={r['state']}  "
        f"wave {r['current_wave']}/{r['wave_count']}"
        + (f"  reason: {r['reason']}" if r.get("reason") else "")
    )
    gate = r.get("gate")
    if r.get("agents") is not None:  # the detailed view: settings and evaluation too
        g = r["gates"]
        ratio = f"{g['max_p99_ratio']:g}x" if g["max_p99_ratio"] else "off"
        print(
            f"gates: p99 ratio {ratio} (+{g['p99_slack_ms']:g} ms slack), error rate <= "
            f"{g['max_error_rate']:g}, min samples {g['min_samples']}, idle agents "
            f"{'allowed' if g['allow_idle_agents'] else 'not allowed'}; bake {r['bake_s']:g} s, "
            f"wave timeout {r['wave_timeout_s']:g} s"
        )
        if gate:
            _show_gate(gate)
    if r.get("agents"):
        table = Table("agent", "wave", "previous", "state", "verdict", "gate", "why")
        for a in r["agents"]:
            verdict = a.get("gate") or {}
            table.add_row(
                a["agent_id"],
                str(a["wave"]),
                str(a["previous_version"]),
                a["state"],
                verdict.get("state", ""),
                verdict.get("gate", ""),
                a["reason"] or verdict.get("reason", ""),
            )
        Console(width=160).print(table)


def _show_gate(gate: dict[str, Any]) -> None:
    """The gate evaluation: on what basis, against which control group, and the tally."""
    print(f"gate basis: {gate['basis']}")
    control = gate.get("control")
    if control:
        names = ", ".join(control["agents"][:12]) + (" ..." if len(control["agents"]) > 12 else "")
        print(f"control agents ({len(control['agents'])}): {names}")
    tally: dict[str, int] = {}
    for v in gate["verdicts"].values():
        tally[v["state"]] = tally.get(v["state"], 0) + 1
    print("verdicts: " + (", ".join(f"{n} {s}" for s, n in sorted(tally.items())) or "none yet"))
    if gate.get("failure"):
        print(f"failure: {gate['failure']}")


def _config(args: argparse.Namespace, client: GatewayClient) -> int:
    path = f"/api/v1/fleet/{args.agent_id}/config"
    if args.config_command == "get":
        _print_json(client.get(path))
    elif args.config_command == "clear":
        _print_json(client.request("DELETE", path))
    else:
        values: dict[str, Any] = {}
        for item in args.values:
            key, sep, text = item.partition("=")
            if not sep or not key:
                raise InvalidInput(f"expected KEY=VALUE, got {item!r}")
            try:  # numbers and booleans as JSON; anything else is a string (a policy name)
                values[key] = json.loads(text)
            except ValueError:
                values[key] = text
        _print_json(client.request("PUT", path, {"values": values}))
    return 0


def gates_from(args: argparse.Namespace) -> dict[str, Any]:
    """The gate settings given on the command line (the rest keep the gateway's defaults)."""
    return {k[5:]: v for k, v in vars(args).items() if k.startswith("gate_")}


def _follow(client: GatewayClient, rid: str) -> dict[str, Any]:
    while True:
        r = client.get(f"/api/v1/rollouts/{rid}")
        if r["state"] in _FINAL:
            return r
        time.sleep(1.0)


def _rollout(args: argparse.Namespace, client: GatewayClient) -> int:
    if args.rollout_command == "start":
        labels = {}
        for item in args.label:
            key, sep, value = item.partition("=")
            if not sep:
                raise InvalidInput(f"--label needs KEY=VALUE, got {item!r}")
            labels[key] = value
        body = {
            "model": args.model,
            "version": args.model_version,
            "strategy": args.strategy,
            "topics": args.topics,
            "waves": [w.strip() for w in args.waves.split(",") if w.strip()],
            "selector": {"sites": args.site, "labels": labels, "agents": args.agent},
            "gates": gates_from(args),
        }
        # Only what was given: the gateway's defaults apply to the rest.
        if "bake_s" in args:
            body["bake_s"] = args.bake_s
        if "rollout_wave_timeout_s" in args:
            body["wave_timeout_s"] = args.rollout_wave_timeout_s
        r = client.post("/api/v1/rollouts", body)
    elif args.rollout_command == "status":
        r = client.get(f"/api/v1/rollouts/{args.rollout_id}")
    else:
        query = f"?model={args.model}" if args.model else ""
        for r in client.get(f"/api/v1/rollouts{query}"):
            _show_rollout(r)
        return 0
    if getattr(args, "wait", False):
        r = _follow(client, r["id"])
    _show_rollout(r)
    return 0 if r["state"] != "rolled_back" or not getattr(args, "wait", False) else 2


def _fleet(client: GatewayClient) -> int:
    table = Table("agent", "site", "online", "models", "update", "p99 ms", "err rate", "last seen")
    now = time.time()
    for a in client.get("/api/v1/fleet"):
        models = ", ".join(f"{n}:{m.get('version')}" for n, m in a["models"].items())
        upd = a.get("update") or {}
        update = f"{upd.get('state', '')} {upd.get('model', '')}:{upd.get('version', '')}".strip()
        metrics = a.get("metrics") or {}
        table.add_row(
            a["agent_id"],
            a["site"],
            "yes" if a["online"] else "NO",
            models,
            update if upd else "",
            f"{metrics.get('p99_ms', 0):.1f}",
            f"{metrics.get('error_rate', 0):.3f}",
            f"{now - a['last_seen']:.0f} s ago",
        )
    Console(width=160).print(table)
    return 0


def agent_topics(prefix: str) -> Topics:
    """The topics as an agent with ``--topic-prefix PREFIX`` uses them (every root is
    prefixed on the agent; the gateway's fleet root gets the same prefix)."""
    p = prefix.strip("/")
    if not p:
        return Topics()
    roots = {f.name: f"{p}/{f.default}" for f in dataclasses.fields(Topics)}
    return Topics(**roots)


def _fleet_local(args: argparse.Namespace, settings: GatewaySettings) -> int:
    """Identity commands: straight on the gateway database (they mint secrets, so they
    run on the gateway's host, not over the API)."""
    from cloud_gateway.brokerconf import write_broker_config
    from cloud_gateway.db import open_database
    from cloud_gateway.enrolment import Enrolments

    enrolments = Enrolments(open_database(settings.resolved_database_url()))
    if args.fleet_command == "enrol":
        token = enrolments.enrol(args.agent_id, args.site)
        print(token)
        print(
            f"enrolled {args.agent_id} (site {args.site}); the token above is shown only "
            "once: it is the agent's gateway token and MQTT password (user = agent id). "
            "Run `fleet broker-config` again and SIGHUP mosquitto.",
            file=sys.stderr,
        )
    elif args.fleet_command == "revoke":
        enrolments.revoke(args.agent_id)
        print(f"revoked {args.agent_id}; run `fleet broker-config` again and SIGHUP mosquitto")
    elif args.fleet_command == "list-enrolled":
        for row in enrolments.all():
            print(f"{row['agent_id']}\t{row['site']}")
    else:
        pw_file = args.gateway_password_file or args.out / "cloud-gateway.password"
        count = sum(1 for r in enrolments.all() if not args.sites or r["site"] in args.sites)
        passwd, acl = write_broker_config(
            enrolments,
            args.out,
            agent_topics(settings.topic_prefix),
            gateway_password_file=pw_file,
            anonymous_clients=args.anonymous_clients,
            sites=args.sites,
        )
        print(f"wrote {passwd} and {acl} ({count} agents)")
    return 0


def _db_copy(args: argparse.Namespace) -> int:
    from cloud_gateway.db import redact
    from cloud_gateway.dbcopy import copy_urls

    copied = copy_urls(args.from_url, args.to_url)
    for table, n in copied.items():
        print(f"{table}\t{n}")
    print(
        f"copied {sum(copied.values())} rows to {redact(args.to_url)}; now move the blob "
        "directory to the shared volume and give every replica the same desired-state key",
        file=sys.stderr,
    )
    return 0


def run(args: argparse.Namespace, settings: GatewaySettings) -> int:
    if args.command == "models" and args.models_command == "build":
        return _build(args)
    if args.command == "models" and args.models_command in ("pack", "install"):
        return run_bundle_command(args.models_command, args)
    if args.command == "config":
        return _config(args, _client(settings))
    if args.command == "fleet" and args.fleet_command in ("assign", "unassign"):
        client = _client(settings)
        path = f"/api/v1/fleet/{args.agent_id}/models/{args.model}"
        if args.fleet_command == "assign":
            body = {"version": args.model_version, "topics": args.topics}
            _print_json(client.request("PUT", path, body))
        else:
            _print_json(client.request("DELETE", path))
        return 0
    if args.command == "fleet" and args.fleet_command:
        return _fleet_local(args, settings)
    if args.command == "db":
        return _db_copy(args)
    client = _client(settings)
    if args.command == "models":
        return _models(args, client)
    if args.command == "rollout":
        return _rollout(args, client)
    if args.command == "rollback":
        body = {"model": args.model, "rollout_id": args.rollout_id}
        _show_rollout(client.post("/api/v1/rollback", body))
        return 0
    return _fleet(client)
