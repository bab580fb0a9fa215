"""``cloud-gateway``: ``serve`` the registry/rollout service, or talk to one as a client.

Every flag ``--foo-bar`` of ``serve`` and the connection flags ``--url``/``--token`` map
1:1 to :class:`GatewaySettings` fields (env ``GATEWAY_FOO_BAR``); flags override env.
The arguments of ``rollout start`` etc. describe one request and are not settings.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from pydantic.fields import FieldInfo

from cloud_gateway import commands
from cloud_gateway.schemas import Gates, RolloutRequest
from cloud_gateway.settings import GatewaySettings
from models.bundle_cli import add_install_parser, add_pack_parser
from models.errors import EdgecloudError
from shell.cli import DefaultsHelpFormatter, add_settings_arguments
from shell.logs import setup_logging
from shell.settings_errors import describe

#: Settings that are never flags: secrets come from the environment or a mounted file
#: (GATEWAY_SECRETS_DIR), not from a command line that ``ps`` shows.
_SECRETS = ("admin_token", "agent_token", "viewer_token")
#: Settings of the client commands (top level), not of ``serve``.
_CLIENT = ("url", "token")


def _doc(name: str) -> str:
    return RolloutRequest.model_fields[name].description or ""


def _optional_float(text: str) -> float | None:
    return None if text.lower() in ("none", "off") else float(text)


def _gate_flag(group: argparse._ArgumentGroup, name: str, field: FieldInfo) -> None:
    """``--max-p99-ratio`` etc.: one flag per Gates field, sent only when given (dest
    ``gate_<field>``, so no gate can collide with a GatewaySettings field)."""
    flag, dest = "--" + name.replace("_", "-"), f"gate_{name}"
    kind: dict[str, Any] = {"type": float, "metavar": "X"}
    if field.annotation is bool:
        kind = {"action": argparse.BooleanOptionalAction}
    elif field.annotation is int:
        kind = {"type": int, "metavar": "N"}
    elif "None" in str(field.annotation):  # optional limits: "none" switches them off
        kind = {"type": _optional_float, "metavar": "X|none"}
    help_ = f"{field.description} (default {field.default})"
    group.add_argument(flag, dest=dest, default=argparse.SUPPRESS, help=help_, **kind)


class _Parser(argparse.ArgumentParser):
    """No abbreviations, here and in every subcommand (argparse builds subparsers with
    the parent's class): ``--slo`` must not silently mean ``--slo-ms``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        kwargs.setdefault("formatter_class", DefaultsHelpFormatter)
        super().__init__(*args, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="cloud-gateway", description="edgecloud model registry and rollout service"
    )
    # Every settings flag is generated from GatewaySettings (shell/cli.py), as for the
    # other three programs; the subcommands' own flags (not settings) are written below.
    add_settings_arguments(parser, GatewaySettings, only=_CLIENT)
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the gateway")
    add_settings_arguments(
        serve,
        GatewaySettings,
        skip=(*_SECRETS, *_CLIENT),
        # serve refuses to start without keys, and without tokens (file or GATEWAY_*_TOKEN)
        required=("tokens_file", "trusted_keys"),
    )

    models = sub.add_parser("models", help="build, push and list model versions")
    msub = models.add_subparsers(dest="models_command", required=True)
    build = msub.add_parser("build", help="build signed bundles locally (models.recipes)")
    build.add_argument("--out", type=Path, required=True, help="output directory (required)")
    build.add_argument("--name", help="one model (default: all built-ins)")
    build.add_argument(
        "--version", type=int, default=1, dest="model_version", metavar="V", help="version"
    )
    build.add_argument(
        "--variant", default="normal", choices=("normal", "nan", "slow"), help="model variant"
    )
    build.add_argument("--key", type=Path, help="signing key (default: OUT/keys/dev.key)")
    push = msub.add_parser("push", help="upload bundles (verified by the gateway)")
    push.add_argument("bundles", nargs="+", type=Path, help="bundle files (.bundle)")
    mlist = msub.add_parser("list", help="list models, or the versions of one")
    mlist.add_argument("name", nargs="?", help="a model name (default: list all models)")
    mdel = msub.add_parser("delete", help="delete an unused version")
    mdel.add_argument("name", help="model name")
    mdel.add_argument("model_version", type=int, metavar="version", help="version number")
    add_pack_parser(msub)
    add_install_parser(msub)

    rollout = sub.add_parser("rollout", help="start and follow rollouts")
    rsub = rollout.add_subparsers(dest="rollout_command", required=True)
    start = rsub.add_parser("start", help="start a rollout")
    start.add_argument("model", help="model name (pushed before)")
    start.add_argument("model_version", type=int, metavar="version", help="version to roll out")
    start.add_argument(
        "--strategy", choices=("canary", "all-at-once"), default="canary", help="wave plan"
    )
    start.add_argument("--waves", default="10%,50%,100%", help="cumulative, e.g. 1,25%%,100%%")
    start.add_argument(
        "--topics",
        help="MQTT topic filter the model answers on agents that do not serve it yet, or to "
        "move it to (default: unchanged; a new model becomes the agent's default model)",
    )
    start.add_argument("--site", action="append", default=[], help="select a site (repeat)")
    start.add_argument("--label", action="append", default=[], help="select KEY=VALUE")
    start.add_argument("--agent", action="append", default=[], help="select an agent id")
    start.add_argument("--bake-s", type=float, default=argparse.SUPPRESS, help=_doc("bake_s"))
    start.add_argument(
        "--wave-timeout-s",
        "--rollout-wave-timeout-s",
        dest="rollout_wave_timeout_s",  # not the serve setting of the same name
        type=float,
        default=argparse.SUPPRESS,
        help=_doc("wave_timeout_s"),
    )
    gates = start.add_argument_group("gates (default: the gateway's defaults)")
    for name, field in Gates.model_fields.items():
        _gate_flag(gates, name, field)
    start.add_argument("--wait", action="store_true", help="follow until it finishes")
    status = rsub.add_parser("status", help="one rollout with its agents and events")
    status.add_argument("rollout_id", help="id printed by 'rollout start'")
    status.add_argument("--wait", action="store_true", help="follow until it finishes")
    rlist = rsub.add_parser("list", help="rollout history")
    rlist.add_argument("--model", help="only this model's rollouts (default: all)")

    rollback = sub.add_parser("rollback", help="roll a model back to its previous version")
    rollback.add_argument("model", help="model name")
    rollback.add_argument("--rollout-id", help="default: the model's latest rollout")

    config = sub.add_parser(
        "config",
        help="an agent's configuration twin: the live settings laid over its flags",
        description="Live settings (policy, slo_ms, anomaly_threshold, cascade_min_confidence, "
        "max_wait_ms, inline_max_ms, pressure_limit, heartbeat_s) set from the gateway "
        "(docs/architecture.md, configuration twin). Over the API, admin token to change.",
    )
    csub = config.add_subparsers(dest="config_command", required=True)
    cget = csub.add_parser("get", help="desired vs reported configuration of one agent")
    cget.add_argument("agent_id", help="the agent")
    cset = csub.add_parser(
        "set", help="set live settings (those left out go back to the agent's flags)"
    )
    cset.add_argument("agent_id", help="the agent")
    cset.add_argument(
        "values", nargs="+", metavar="KEY=VALUE", help="e.g. policy=local-only slo_ms=250"
    )
    cclear = csub.add_parser("clear", help="back to the agent's flags only")
    cclear.add_argument("agent_id", help="the agent")

    fleet = sub.add_parser(
        "fleet",
        help="table of agents; enrol/revoke agent identities, generate the broker config",
        description="Without a subcommand: the table of agents (over the API). enrol, revoke, "
        "list-enrolled and broker-config work on the gateway database (--db-path) directly, "
        "on the gateway's host; the running gateway sees the change at once.",
    )
    fsub = fleet.add_subparsers(dest="fleet_command")
    enrol = fsub.add_parser(
        "enrol", help="issue (or rotate) an agent's token; printed once, stored hashed"
    )
    enrol.add_argument("agent_id", help="the agent to enrol (its MQTT user name too)")
    enrol.add_argument("--site", required=True, help="the agent's site")
    revoke = fsub.add_parser(
        "revoke",
        help="delete an agent's token (API at once; MQTT after broker-config and SIGHUP)",
    )
    revoke.add_argument("agent_id", help="the agent whose token is deleted")
    fsub.add_parser("list-enrolled", help="enrolled agent ids and sites")
    assign = fsub.add_parser(
        "assign",
        help="serve a model version on one agent (over the API): add it or move its topics",
    )
    assign.add_argument("agent_id", help="the agent")
    assign.add_argument("model", help="model name (uploaded to the gateway)")
    assign.add_argument("model_version", type=int, metavar="version", help="version to serve")
    assign.add_argument(
        "--topics",
        help="MQTT topic filter the model answers, e.g. sensors/+/+/vib (default: unchanged, "
        "or the agent's default model when new)",
    )
    unassign = fsub.add_parser("unassign", help="stop serving a model on one agent (API)")
    unassign.add_argument("agent_id", help="the agent")
    unassign.add_argument("model", help="model name")
    bconf = fsub.add_parser(
        "broker-config",
        help="write the mosquitto passwd + acl for the enrolled agents (then SIGHUP mosquitto)",
    )
    bconf.add_argument("--out", type=Path, required=True, help="directory for passwd and acl")
    bconf.add_argument(
        "--gateway-password-file",
        type=Path,
        help="the gateway's MQTT password (user cloud-gateway); created when missing "
        "(default: OUT/cloud-gateway.password)",
    )
    bconf.add_argument(
        "--site",
        action="append",
        default=[],
        dest="sites",
        help="only the agents of this site (repeat; default: all), e.g. for a site's broker",
    )
    bconf.add_argument(
        "--anonymous-clients",
        action="store_true",
        help="let anonymous clients publish sensors/# and read results, alerts and status",
    )
    dbp = sub.add_parser("db", help="the gateway database: copy it to another one")
    dsub = dbp.add_subparsers(dest="db_command", required=True)
    dcopy = dsub.add_parser(
        "copy",
        help="copy every table into a new, empty database (SQLite -> PostgreSQL); "
        "stop the gateway first",
        description="Copies registry, fleet, enrolments, desired state, rollouts and history "
        "row for row; both databases are first migrated to this gateway's schema, the "
        "destination must be empty. Bundle blobs and the desired-state key are files: move "
        "them yourself (docs/deploy.md).",
    )
    dcopy.add_argument(
        "--from",
        dest="from_url",
        required=True,
        metavar="URL",
        help="sqlite:///PATH or postgresql://...",
    )
    dcopy.add_argument(
        "--to", dest="to_url", required=True, metavar="URL", help="an empty database's URL"
    )
    for f in (enrol, revoke, fsub.choices["list-enrolled"]):
        add_settings_arguments(f, GatewaySettings, only=("db_path", "database_url"))
    add_settings_arguments(bconf, GatewaySettings, only=("db_path", "database_url", "topic_prefix"))
    return parser


def settings_from(args: argparse.Namespace) -> GatewaySettings:
    fields = set(GatewaySettings.model_fields)
    overrides: dict[str, Any] = {
        k: v for k, v in vars(args).items() if k in fields and v is not None
    }
    # Kubernetes secrets mounted as files (gateway_admin_token, ...) in this directory.
    secrets_dir = os.environ.get("GATEWAY_SECRETS_DIR") or None
    return GatewaySettings(_secrets_dir=secrets_dir, **overrides)  # type: ignore[call-arg]


async def _serve(settings: GatewaySettings) -> None:
    from cloud_gateway.service import serve

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    async with serve(settings) as gw:
        print(f"cloud-gateway listening on {gw.url}", flush=True)
        await stop.wait()


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = settings_from(args)
        setup_logging(settings.log_level, settings.log_format)
        if args.command == "serve":
            asyncio.run(_serve(settings))
            return 0
        return commands.run(args, settings)
    except ValidationError as exc:
        print(f"cloud-gateway: invalid configuration: {describe(exc)}", file=sys.stderr)
        return 2
    except EdgecloudError as exc:
        print(f"error: {exc.reason}: {exc.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
