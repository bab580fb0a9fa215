"""CLI: every flag maps 1:1 to an EdgeSettings field; flags override EDGE_ env."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from edge_agent.app.cli import build_parser, main, settings_from_args
from edge_agent.app.settings import EdgeSettings

CONTRACT_FLAGS = {
    "--agent-id",
    "--site",
    "--broker",
    "--repository",
    "--model",
    "--cloud",
    "--policy",
    "--slo-ms",
    "--http-port",
    "--http-host",
    "--topics-filter",
    "--share-group",
    "--max-batch",
    "--max-wait-ms",
    "--workers",
    "--db-path",
    "--gateway-url",
    "--gateway-token-file",
    "--trusted-keys",
    "--tls-ca",
    "--tls-cert",
    "--tls-key",
    "--mqtt-ca-file",
    "--heartbeat-s",
}


def test_flags_map_one_to_one_to_settings() -> None:
    flags = {
        opt for a in build_parser()._actions for opt in a.option_strings if opt.startswith("--")
    } - {"--help"}
    fields = {f"--{name.replace('_', '-')}" for name in EdgeSettings.model_fields}
    assert flags == fields
    assert flags >= CONTRACT_FLAGS


def test_cli_overrides_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGE_SLO_MS", "80")
    monkeypatch.setenv("EDGE_SITE", "from-env")
    s = settings_from_args(
        [
            "--site",
            "from-cli",
            "--model",
            "motion-edge:3",
            "--clean-session",
            "true",
            "--db-path",
            "x.db",
        ]
    )
    assert s.site == "from-cli" and s.slo_ms == 80
    assert [(b.name, b.version, b.topics) for b in s.bindings()] == [("motion-edge", 3, None)]
    assert s.clean_session is True and s.db_path == Path("x.db")
    assert s.stream_state_path() == Path("x.streams.npz")


def test_invalid_configuration_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--agent-id", "bad/id"]) == 2
    assert "invalid configuration" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--policy", "nope"])


def test_secrets_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "edge_broker").write_text("mqtt://user:pw@broker.local:1884")
    monkeypatch.setenv("EDGE_SECRETS_DIR", str(tmp_path))
    assert settings_from_args([]).broker == "mqtt://user:pw@broker.local:1884"
    assert settings_from_args(["--broker", "mqtt://x:1"]).broker == "mqtt://x:1"


def _run_agent(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edge_agent", "--http-port", "0", "--log-level", "WARNING", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_failed_start_exits_1_with_the_real_error(mosquitto: Any, repo: Path) -> None:
    # The model load fails before the MQTT session starts: shutdown must not bury it.
    proc = _run_agent("--broker", mosquitto.url, "--repository", str(repo), "--model", "nope")
    assert proc.returncode == 1, proc.stderr
    assert "edge-agent: not-found: model 'nope' not in repository" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_failed_start_after_connecting_exits_1_with_the_real_error(
    mosquitto: Any, repo: Path
) -> None:
    # The HTTP port is taken: start fails after the MQTT thread runs; it must be stopped.
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = _run_agent(
            "--broker", mosquitto.url, "--repository", str(repo), "--http-port", str(port)
        )
    assert proc.returncode == 1, proc.stderr
    assert "edge-agent: cannot start:" in proc.stderr
    assert "address already in use" in proc.stderr.lower()
    assert "Traceback" not in proc.stderr
