"""``--help`` of all four programs: every settings flag shows its default and environment
variable, required settings say so, positionals are described, and no flag is accepted
by a prefix of its name (``--slo`` must not silently mean ``--slo-ms``)."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections.abc import Callable, Iterator

import pytest
from pydantic_settings import BaseSettings

from cloud_gateway.cli import build_parser as gateway_parser
from cloud_gateway.settings import GatewaySettings
from edge_agent.app.cli import build_parser as edge_parser
from edge_agent.app.settings import EdgeSettings
from offload.cli import build_parser as offload_parser
from offload.settings import OffloadSettings
from simulators.cli import build_parser as sim_parser
from simulators.settings import SimSettings

PROGRAMS: dict[str, tuple[Callable[[], argparse.ArgumentParser], type[BaseSettings], str]] = {
    "edge-agent": (edge_parser, EdgeSettings, "EDGE_"),
    "offload-server": (offload_parser, OffloadSettings, "OFFLOAD_"),
    "cloud-gateway": (gateway_parser, GatewaySettings, "GATEWAY_"),
    "fleet-sim": (sim_parser, SimSettings, "SIM_"),
}


def _parsers(parser: argparse.ArgumentParser) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    yield parser.prog, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                yield from _parsers(child)


def _settings_actions(
    parser: argparse.ArgumentParser, settings: type[BaseSettings]
) -> Iterator[argparse.Action]:
    for action in parser._actions:
        if action.option_strings and action.dest in settings.model_fields:
            yield action


@pytest.mark.parametrize("program", PROGRAMS)
def test_every_settings_flag_shows_default_and_env(program: str) -> None:
    build, settings, prefix = PROGRAMS[program]
    seen = 0
    for prog, parser in _parsers(build()):
        parser.format_help()  # a stray % in any help string would raise here
        for action in _settings_actions(parser, settings):
            seen += 1
            env = f"env {prefix}{action.dest.upper()}"
            assert action.help and env in action.help, (prog, action.option_strings)
            assert "default" in action.help or "required" in action.help, (prog, action.dest)
    assert seen >= 10


def test_defaults_shown_are_the_settings_defaults() -> None:
    help_ = {a.dest: a.help for a in edge_parser()._actions}
    assert (
        help_["slo_ms"] == "Latency SLO per request; default from the manifest. (env EDGE_SLO_MS)"
    )
    assert "(default: site-1; env EDGE_SITE)" in (help_["site"] or "")
    help_ = {a.dest: a.help for a in offload_parser()._actions}
    assert "(default: 8001; env OFFLOAD_GRPC_PORT)" in (help_["grpc_port"] or "")


def test_the_gateway_says_token_file_and_trusted_keys_are_required() -> None:
    serve = dict(_parsers(gateway_parser()))["cloud-gateway serve"]
    help_ = {a.dest: a.help or "" for a in serve._actions}
    assert help_["tokens_file"].endswith("(required; env GATEWAY_TOKENS_FILE)")
    assert help_["trusted_keys"].endswith("(required; env GATEWAY_TRUSTED_KEYS)")
    assert "(default: 8600; env GATEWAY_PORT)" in help_["port"]


@pytest.mark.parametrize("program", PROGRAMS)
def test_positionals_are_described_and_prefixes_refused(program: str) -> None:
    build, _, _ = PROGRAMS[program]
    for prog, parser in _parsers(build()):
        assert parser.allow_abbrev is False, prog
        for action in parser._actions:
            if not action.option_strings and not isinstance(action, argparse._SubParsersAction):
                assert action.help, (prog, action.dest)


@pytest.mark.parametrize(
    ("module", "argv", "flag"),
    [
        ("edge_agent", ["--slo", "5"], "--slo"),
        ("offload.cli", ["--grpc", "1"], "--grpc"),
        ("cloud_gateway", ["serve", "--tokens", "x"], "--tokens"),
        ("cloud_gateway", ["models", "pack", "m.onnx", "--out", "o", "--sample", "x"], "--sample"),
        ("simulators", ["run", "demo", "--slo", "5"], "--slo"),
    ],
)
def test_a_prefix_is_an_error_in_the_real_program(module: str, argv: list[str], flag: str) -> None:
    code = {
        "offload.cli": "import sys; from offload.cli import main; sys.exit(main())",
    }.get(module)
    cmd = [sys.executable, "-c", code, *argv] if code else [sys.executable, "-m", module, *argv]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 2, done.stderr
    assert f"unrecognized arguments: {flag}" in done.stderr


def test_request_flags_of_the_gateway_show_their_defaults() -> None:
    parsers = dict(_parsers(gateway_parser()))
    start = parsers["cloud-gateway rollout start"].format_help()
    assert "wave plan (default: canary)" in start
    assert "(default: 10%,50%,100%)" in start
    build = parsers["cloud-gateway models build"].format_help()
    assert "model variant (default: normal)" in build
    pack = parsers["cloud-gateway models pack"].format_help()
    assert "(default: keys/signing.key)" in pack and "output directory (required)" in pack
