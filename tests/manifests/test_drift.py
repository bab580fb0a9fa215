"""The manifests cannot drift from the code: every command, flag and environment variable
of our containers must be a real CLI flag (``build_parser()``) or settings field (env
prefix + ``model_fields``), the values must pass the settings' own validation, paths must
lie on mounted volumes and ports must match the declared container ports."""

from __future__ import annotations

import argparse
import importlib
import os
import re
import shlex
from dataclasses import dataclass
from typing import Any

import pytest
from pydantic_settings import BaseSettings

from tests.manifests.rendering import REPO, TARGETS, Container, container_env, containers, render


@dataclass(frozen=True)
class Process:
    cli: str
    settings: str
    #: settings field -> name of the container port it must equal
    ports: tuple[tuple[str, str], ...]
    #: settings fields naming the listen address (must accept connections from the pod IP)
    binds: tuple[str, ...]
    #: settings fields whose path the process writes (must be on a writable mount)
    writes: tuple[str, ...]


PROCESSES: dict[str, Process] = {
    "edge-agent": Process(
        "edge_agent.app.cli",
        "edge_agent.app.settings.EdgeSettings",
        ports=(("http_port", "http"),),
        binds=("http_host",),
        writes=("repository", "db_path", "engine_cache_dir"),
    ),
    "offload-server": Process(
        "offload.cli",
        "offload.settings.OffloadSettings",
        ports=(("grpc_port", "grpc"), ("metrics_port", "metrics")),
        binds=("host",),
        writes=("repository",),
    ),
    "cloud-gateway": Process(
        "cloud_gateway.cli",
        "cloud_gateway.settings.GatewaySettings",
        ports=(("port", "http"),),
        binds=("host",),
        writes=("db_path", "blob_dir", "cloud_repository"),
    ),
}

#: Plausible values for variables filled from Secrets or the downward API at run time.
RUNTIME_VALUES: dict[str, str] = {
    "EDGE_AGENT_ID": "jetson-01",
    "EDGE_BROKER": "mqtt://edge-agent:secret@mosquitto.edgecloud.svc:1883",
    "GATEWAY_BROKER": "mqtt://cloud-gateway:secret@mosquitto.edgecloud.svc:1883",
    "GATEWAY_DATABASE_URL": "postgresql://cloud_gateway:secret@postgres.example.internal/edgecloud",
}


def settings_class(process: Process) -> type[BaseSettings]:
    module, _, name = process.settings.rpartition(".")
    cls = getattr(importlib.import_module(module), name)
    assert issubclass(cls, BaseSettings)
    return cls


def parser_for(process: Process, words: list[str]) -> tuple[argparse.ArgumentParser, list[str]]:
    """The (sub)parser that handles ``words`` (subcommands walked) and the words left."""
    parser = importlib.import_module(process.cli).build_parser()
    while words and not words[0].startswith("-"):
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs or words[0] not in subs[0].choices:
            break
        parser, words = subs[0].choices[words[0]], words[1:]
    return parser, words


def flag_problems(where: str, parser: argparse.ArgumentParser, words: list[str]) -> list[str]:
    out: list[str] = []
    options = parser._option_string_actions
    i = 0
    while i < len(words):
        word = words[i]
        flag, has_value, _ = word.partition("=")
        if not flag.startswith("--"):
            out.append(f"{where}: unexpected argument {word!r}")
        elif flag not in options:
            out.append(f"{where}: {flag} is not a flag of {parser.prog}")
        elif options[flag].nargs != 0 and not has_value:
            i += 1  # the flag's value
        i += 1
    return out


def env_problems(where: str, cls: type[BaseSettings], env: dict[str, Any]) -> list[str]:
    prefix = str(cls.model_config.get("env_prefix", ""))
    fields = {name.lower() for name in cls.model_fields}
    out: list[str] = []
    for name in env:
        if not name.startswith(prefix) or name[len(prefix) :].lower() not in fields:
            out.append(f"{where}: env {name} is no field of {cls.__name__} (prefix {prefix})")
    return out


def effective_settings(
    cls: type[BaseSettings], env: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> BaseSettings:
    """Build the settings exactly as the process would from this environment."""
    prefix = str(cls.model_config.get("env_prefix", ""))
    with monkeypatch.context() as m:
        for name in list(os.environ):
            if name.startswith(prefix):
                m.delenv(name)
        for name, value in env.items():
            m.setenv(name, value if isinstance(value, str) else RUNTIME_VALUES[name])
        return cls()


def mount_for(c: Container, path: str) -> dict[str, Any] | None:
    best = None
    for mount in c.spec.get("volumeMounts", []):
        root = mount["mountPath"].rstrip("/")
        if (path == root or path.startswith(root + "/")) and (
            best is None or len(root) > len(best["mountPath"])
        ):
            best = mount
    return best


def our_containers(target: str) -> list[tuple[Container, Process]]:
    found = []
    for c in containers(render(target)):
        command = c.spec.get("command", [])
        if command and command[0] in PROCESSES:
            found.append((c, PROCESSES[command[0]]))
    return found


def test_every_process_is_deployed() -> None:
    deployed = {c.spec["command"][0] for t in TARGETS for c, _ in our_containers(t)}
    assert deployed == set(PROCESSES)


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_commands_and_flags_exist(target: str) -> None:
    out: list[str] = []
    for c, process in our_containers(target):
        words = [*c.spec["command"][1:], *c.spec.get("args", [])]
        parser, rest = parser_for(process, words)
        out += flag_problems(c.where, parser, rest)
    assert out == []


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_env_vars_are_settings_fields(target: str) -> None:
    resources = render(target)
    out: list[str] = []
    for c, process in our_containers(target):
        out += env_problems(c.where, settings_class(process), container_env(c, resources))
    assert out == []


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_settings_accept_the_manifest_values(target: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Values parse, listeners match the declared ports, files sit on mounted volumes."""
    resources = render(target)
    out: list[str] = []
    for c, process in our_containers(target):
        cls = settings_class(process)
        env = container_env(c, resources)
        settings = effective_settings(cls, env, monkeypatch)
        ports = {p["name"]: p["containerPort"] for p in c.spec.get("ports", [])}
        for field, port_name in process.ports:
            if getattr(settings, field) != ports.get(port_name):
                out.append(f"{c.where}: {field}={getattr(settings, field)} but port "
                           f"{port_name} is {ports.get(port_name)}")  # fmt: skip
        for field in process.binds:
            if getattr(settings, field) not in ("0.0.0.0", "::"):
                out.append(f"{c.where}: {field}={getattr(settings, field)} is unreachable")
        for name, value in env.items():
            if not (isinstance(value, str) and value.startswith("/")):
                continue
            mount = mount_for(c, value)
            field = name[len(str(cls.model_config.get("env_prefix", ""))) :].lower()
            if mount is None:
                out.append(f"{c.where}: {name}={value} is on the read-only root filesystem")
            elif field in process.writes and mount.get("readOnly"):
                out.append(f"{c.where}: {name}={value} must be writable")
    assert out == []


def test_flag_checker_catches_unknown_flags() -> None:
    parser = argparse.ArgumentParser(prog="demo")
    parser.add_argument("--known")
    parser.add_argument("--switch", action="store_true")
    assert flag_problems("w", parser, ["--known", "x", "--switch", "--known=y"]) == []
    assert flag_problems("w", parser, ["--unknown", "--switch", "stray"]) == [
        "w: --unknown is not a flag of demo",
        "w: unexpected argument 'stray'",
    ]


def documented_commands() -> list[list[str]]:
    """Command lines of our processes in docs/deploy.md's ``bash`` blocks."""
    text = (REPO / "docs" / "deploy.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", text, flags=re.DOTALL)
    lines = "\n".join(blocks).replace("\\\n", " ").splitlines()
    return [shlex.split(line) for line in lines if line.strip().split(" ")[0] in PROCESSES]


def test_documented_commands_parse() -> None:
    commands = documented_commands()
    assert len(commands) >= 3
    for words in commands:
        parser = importlib.import_module(PROCESSES[words[0]].cli).build_parser()
        try:
            parser.parse_args(words[1:])
        except SystemExit as exc:
            raise AssertionError(f"docs/deploy.md: {' '.join(words)} does not parse") from exc
