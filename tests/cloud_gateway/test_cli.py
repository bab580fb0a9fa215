"""``cloud-gateway`` as users run it: ``serve`` as a real subprocess, client commands
against it, and the flag <-> settings mapping the deploy manifests rely on."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cloud_gateway.cli import build_parser, main, settings_from
from cloud_gateway.client import GatewayClient
from cloud_gateway.commands import gates_from
from cloud_gateway.schemas import Gates
from cloud_gateway.settings import GatewaySettings
from tests.cloud_gateway.bundles import BundleSet
from tests.cloud_gateway.conftest import TOKENS, document
from tests.cloud_gateway.mqttutil import Peer
from tests.conftest import free_port, wait_for_port


def _serve_flags(parser: Any) -> set[str]:
    serve = parser._subparsers._group_actions[0].choices["serve"]
    return {a.dest for a in serve._actions if a.dest != "help"}


def test_every_serve_flag_is_a_settings_field(monkeypatch: pytest.MonkeyPatch) -> None:
    parser = build_parser()
    flags = _serve_flags(parser)
    assert flags <= set(GatewaySettings.model_fields), flags - set(GatewaySettings.model_fields)
    assert {
        "host",
        "port",
        "db_path",
        "blob_dir",
        "broker",
        "cloud",
        "trusted_keys",
        "tokens_file",
        "heartbeat_timeout_s",
    } <= flags
    monkeypatch.setenv("GATEWAY_PORT", "1234")
    monkeypatch.setenv("GATEWAY_BROKER", "mqtt://env:1883")
    s = settings_from(parser.parse_args(["serve", "--port", "4321"]))
    assert s.port == 4321 and s.broker == "mqtt://env:1883"  # flags override env
    for field in GatewaySettings.model_fields.values():
        assert field.description, "every settings field is documented"


def test_rollout_start_gate_flags_map_to_the_gates_fields() -> None:
    parser = build_parser()
    words = ["rollout", "start", "motion-edge", "2"]
    args = parser.parse_args(words)
    assert gates_from(args) == {}  # nothing given: the gateway's defaults apply
    assert "bake_s" not in args and "rollout_wave_timeout_s" not in args
    given = [
        *("--max-p99-ratio", "none", "--min-samples", "50", "--allow-idle-agents"),
        *("--no-control", "--max-error-rate", "0.1", "--idle-grace-s", "4"),
        *("--p99-confirm-samples", "80", "--bake-s", "12", "--wave-timeout-s", "90"),
    ]
    args = parser.parse_args([*words, *given])
    gates = gates_from(args)
    assert gates == {
        "max_p99_ratio": None,
        "min_samples": 50,
        "allow_idle_agents": True,
        "control": False,
        "max_error_rate": 0.1,
        "idle_grace_s": 4.0,
        "p99_confirm_samples": 80,
    }
    assert Gates.model_validate(gates).allow_idle_agents is True
    assert (args.bake_s, args.rollout_wave_timeout_s) == (12.0, 90.0)
    # Every Gates field has a flag, and none is mistaken for a gateway setting.
    start = parser.parse_args([*words, "--no-allow-idle-agents"])
    assert gates_from(start) == {"allow_idle_agents": False}
    flags = {a.dest for a in _subparser(parser, "rollout", "start")._actions}
    assert {f"gate_{name}" for name in Gates.model_fields} <= flags
    assert not flags & set(GatewaySettings.model_fields)
    assert settings_from(args).wave_timeout_s == 300.0  # the serve default, untouched


def _subparser(parser: Any, *names: str) -> Any:
    for name in names:
        parser = next(
            a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction"
        ).choices[name]
    return parser


def test_tokens_from_a_secrets_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "gateway_admin_token").write_text("from-a-secret")
    monkeypatch.setenv("GATEWAY_SECRETS_DIR", str(tmp_path))
    s = settings_from(build_parser().parse_args(["fleet"]))
    assert s.admin_token is not None and s.admin_token.get_secret_value() == "from-a-secret"
    assert "from-a-secret" not in repr(s)


@pytest.fixture
def served(
    tmp_path: Path, mosquitto: Any, bundle_set: BundleSet, tokens_file: Path, topic_prefix: str
) -> Iterator[str]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cloud_gateway",
            "serve",
            "--port",
            str(port),
            "--db-path",
            str(tmp_path / "gw.sqlite"),
            "--blob-dir",
            str(tmp_path / "blobs"),
            "--broker",
            mosquitto.url,
            "--topic-prefix",
            topic_prefix,
            "--trusted-keys",
            str(bundle_set.trusted_dir),
            "--tokens-file",
            str(tokens_file),
            "--tick-s",
            "0.1",
        ],
        env=env,
    )
    try:
        wait_for_port(port, timeout=20)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        assert proc.wait(10) == 0, "SIGTERM must shut the gateway down cleanly"


def _cli(url: str, role: str, *args: str) -> int:
    return main(["--url", url, "--token", TOKENS[role], *args])


def _api_get(url: str, path: str) -> Any:
    return GatewayClient(url, TOKENS["viewer"]).get(path)


def test_client_commands_against_a_served_gateway(
    served: str,
    bundle_set: BundleSet,
    mosquitto: Any,
    topic_prefix: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for v in (1, 2):
        assert _cli(served, "admin", "models", "push", str(bundle_set.good[v])) == 0
    assert "pushed motion-edge:2" in capsys.readouterr().out
    assert _cli(served, "admin", "models", "push", str(bundle_set.bad["bad-signature"])) == 1
    assert "error: bad-signature:" in capsys.readouterr().err
    assert _cli(served, "viewer", "models", "push", str(bundle_set.good[1])) == 1
    assert "permission-denied" in capsys.readouterr().err
    assert _cli(served, "viewer", "models", "list") == 0
    assert "motion-edge" in capsys.readouterr().out

    peer = Peer(mosquitto.url)
    try:
        peer.subscribe(f"{topic_prefix}/fleet/cli-a1/desired")
        status = {
            "agent_id": "cli-a1",
            "site": "s1",
            "online": True,
            "models": {"motion-edge": {"version": 1, "state": "serving"}},
            "metrics": {"p99_ms": 1.5, "error_rate": 0.0},
        }
        peer.publish(f"{topic_prefix}/fleet/cli-a1/status", status)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            assert _cli(served, "viewer", "fleet") == 0
            if "cli-a1" in capsys.readouterr().out:
                break
            time.sleep(0.1)
        else:
            pytest.fail("agent never showed up in `cloud-gateway fleet`")

        assert (
            _cli(
                served,
                "admin",
                "rollout",
                "start",
                "motion-edge",
                "2",
                "--strategy",
                "all-at-once",
                "--agent",
                "cli-a1",
                *("--min-samples", "5", "--allow-idle-agents", "--max-p99-ratio", "none"),
            )
            == 0
        )
        out = capsys.readouterr().out
        rid = out.split()[0]
        assert rid.startswith("ro-") and "state=running" in out
        assert _cli(served, "viewer", "rollout", "status", rid) == 0
        assert "cli-a1" in capsys.readouterr().out
        topic = f"{topic_prefix}/fleet/cli-a1/desired"

        def wait_for(count: int) -> None:
            deadline = time.monotonic() + 20
            while len(peer.got(topic)) < count and time.monotonic() < deadline:
                time.sleep(0.05)

        # The engine issues the wave on its next tick; a rollback before that touches
        # no agent and publishes nothing.
        wait_for(1)
        # The gates given as flags reached the rollout; status shows how it is judged.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            assert _cli(served, "viewer", "rollout", "status", rid) == 0
            out = capsys.readouterr().out
            if "1 waiting" in out:
                break
            time.sleep(0.1)
        assert "gate basis: no control group (every target has the new version" in out, out
        assert "verdicts: 1 waiting" in out
        row = next(line for line in out.splitlines() if "cli-a1" in line)
        assert "waiting" in row and "not on v2 yet" in row, row
        gates = _api_get(served, f"/api/v1/rollouts/{rid}")["gates"]
        assert (gates["min_samples"], gates["allow_idle_agents"], gates["max_p99_ratio"]) == (
            5,
            True,
            None,
        )
        assert _cli(served, "admin", "rollback", "motion-edge") == 0
        assert "state=rolled_back" in capsys.readouterr().out
        assert _cli(served, "viewer", "rollout", "list") == 0
        assert rid in capsys.readouterr().out
        wait_for(2)
        versions = [document(p)["models"]["motion-edge"]["version"] for p in peer.got(topic)]
        assert versions == [2, 1]
        # The configuration twin from the command line: set, read back, refuse, clear.
        set_both = ("config", "set", "cli-a1", "policy=local-only", "slo_ms=250")
        assert _cli(served, "admin", *set_both) == 0
        desired = json.loads(capsys.readouterr().out)["desired"]
        assert desired["values"] == {"policy": "local-only", "slo_ms": 250}
        assert _cli(served, "admin", "config", "set", "cli-a1", "slo_ms=250") == 0
        assert json.loads(capsys.readouterr().out)["desired"]["values"] == {"slo_ms": 250}
        assert _cli(served, "viewer", "config", "get", "cli-a1") == 0
        view = json.loads(capsys.readouterr().out)
        assert view["agent_id"] == "cli-a1" and view["status"] in ("pending", "unknown")
        assert _cli(served, "admin", "config", "set", "cli-a1", "no_such=1") == 1
        assert "no_such" in capsys.readouterr().err
        assert _cli(served, "viewer", "config", "clear", "cli-a1") == 1  # admin only
        capsys.readouterr()
        assert _cli(served, "admin", "config", "clear", "cli-a1") == 0
        wait_for(5)
        assert document(peer.got(topic)[-1]).get("config") is None
    finally:
        peer.publish(f"{topic_prefix}/fleet/cli-a1/status", b"")
        peer.publish(f"{topic_prefix}/fleet/cli-a1/desired", b"")
        peer.close()


def test_models_build(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        [
            "models",
            "build",
            "--out",
            str(tmp_path),
            "--name",
            "motion-edge",
            "--version",
            "7",
            "--variant",
            "nan",
        ]
    )
    assert code == 0
    path = Path(capsys.readouterr().out.strip())
    assert path.name == "motion-edge-7.bundle" and path.stat().st_size > 1000
    assert (tmp_path / "keys" / "dev.pub").exists()


def test_client_reports_unreachable_gateway(capsys: pytest.CaptureFixture[str]) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    assert main(["--url", url, "--token", "x", "fleet"]) == 1
    assert "unavailable" in capsys.readouterr().err
