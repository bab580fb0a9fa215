"""Walk an argparse parser into a plain, JSON-able inventory of its command line.

The inventory (commands, subcommands, flag names, defaults and the environment
variable named in each help line) is what must stay identical when the four CLIs
are rebuilt one way (issue 17 item 4); tests compare a live parser against the
fixture recorded from main before any change.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable
from typing import Any

from cloud_gateway import cli as gateway_cli
from edge_agent.app import cli as edge_cli
from offload import cli as offload_cli
from simulators import cli as sim_cli

PROGRAMS: dict[str, Callable[[], argparse.ArgumentParser]] = {
    "edge-agent": edge_cli.build_parser,
    "fleet-sim": sim_cli.build_parser,
    "offload-server": offload_cli.build_parser,
    "cloud-gateway": gateway_cli.build_parser,
}

_ENV = re.compile(r"\benv ([A-Z][A-Z0-9_]+)")


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return repr(value)


def inventory(parser: argparse.ArgumentParser) -> dict[str, Any]:
    """Flags of ``parser`` and, recursively, of each of its subcommands."""
    flags: dict[str, Any] = {}
    commands: dict[str, Any] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                commands[name] = inventory(sub)
            continue
        if isinstance(action, argparse._HelpAction):
            continue
        key = "/".join(action.option_strings) or action.dest
        env = _ENV.search(action.help or "")
        flags[key] = {
            "dest": action.dest,
            "default": _jsonable(action.default),
            "required": action.required,
            "nargs": _jsonable(action.nargs),
            "choices": _jsonable(list(action.choices)) if action.choices else None,
            "env": env.group(1) if env else None,
        }
    return {"flags": flags, "commands": commands}
