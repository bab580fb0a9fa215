"""CLI: every flag maps 1:1 to an EdgeSettings field; flags override EDGE_ env."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_agent.cli import build_parser, main, settings_from_args
from edge_agent.settings import EdgeSettings

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
    assert s.model_ref() == ("motion-edge", 3)
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
