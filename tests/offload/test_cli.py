"""The CLI contract: every flag maps 1:1 to an OffloadSettings field."""

from __future__ import annotations

from pathlib import Path

import pytest

from offload.cli import build_parser, main
from offload.settings import OffloadSettings


def test_every_flag_is_a_settings_field_and_back() -> None:
    parser = build_parser()
    flags = {a.dest for a in parser._actions if a.option_strings and a.dest != "help"}
    assert flags == set(OffloadSettings.model_fields)
    for action in parser._actions:
        for option in action.option_strings:
            if option.startswith("--") and option != "--help":
                assert option[2:].replace("-", "_") == action.dest


def test_env_is_read_and_flags_win(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OFFLOAD_MAX_BATCH", "7")
    monkeypatch.setenv("OFFLOAD_GRPC_PORT", "9001")
    assert OffloadSettings().max_batch == 7
    args = build_parser().parse_args(["--grpc-port", "9100"])
    overrides = {k: v for k, v in vars(args).items() if v is not None}
    settings = OffloadSettings(**overrides)
    assert settings.grpc_port == 9100 and settings.max_batch == 7


def test_invalid_settings_exit_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["--repository", str(tmp_path), "--workers", "0"]) == 2
    assert "workers" in capsys.readouterr().err


@pytest.mark.parametrize("window", ["1024", "-1", str(2**31)])
def test_a_window_that_cannot_work_is_refused_at_start(
    window: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert main(["--repository", str(tmp_path), "--http2-window-bytes", window]) != 0
    assert "http2" in capsys.readouterr().err.lower()


def test_bad_tls_config_exits_1(tmp_path: Path) -> None:
    rc = main(
        [
            "--repository",
            str(tmp_path),
            "--host",
            "127.0.0.1",
            "--grpc-port",
            "0",
            "--metrics-port",
            "-1",
            "--tls-ca",
            str(tmp_path / "ca.pem"),
        ]
    )
    assert rc == 1


def test_http_port_in_use_is_one_error_line(tmp_path: Path) -> None:
    import socket
    import subprocess
    import sys

    from tests.conftest import free_port

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        cmd = [sys.executable, "-m", "offload", "--repository", str(tmp_path)]
        cmd += ["--grpc-port", str(free_port()), "--metrics-port", "-1", "--http-port", str(port)]
        result = subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 1
    output = result.stdout + result.stderr
    assert f"cannot bind HTTP to 127.0.0.1:{port}" in output
    assert "Traceback" not in output
