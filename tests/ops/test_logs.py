"""Logs of the four programs, run as real subprocesses: ``--log-format json`` gives one JSON
object per line, a bad level or format is a one-line configuration error (exit 2), an
unreachable broker is one WARNING per outage in every process, and an ordinary SIGTERM
ends every program without a traceback."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import psutil
import pytest

from models.recipes import build_all
from tests.conftest import Mosquitto, free_port, wait_for_port
from tests.ops.programs import Program, json_records, run, write_tokens

#: (program, words before the flags, env prefix)
PROGRAMS = [
    ("edge-agent", (), "EDGE"),
    ("offload-server", (), "OFFLOAD"),
    ("cloud-gateway", ("serve",), "GATEWAY"),
    ("fleet-sim", ("list",), "SIM"),
]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return build_all(tmp_path_factory.mktemp("ops-models"), names=("motion-edge",))


def _one_line_error(proc: subprocess.CompletedProcess, program: str, field: str) -> str:
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"{program}: invalid "), lines[0]
    assert f"{field}: " in lines[0]
    return lines[0]


@pytest.mark.parametrize(("program", "words", "prefix"), PROGRAMS)
def test_bad_level_or_format_is_a_one_line_config_error(
    program: str, words: tuple[str, ...], prefix: str
) -> None:
    line = _one_line_error(run(program, *words, "--log-level", "INF0"), program, "log_level")
    assert "'INF0'" in line and "DEBUG, INFO, WARNING, ERROR" in line
    env = {**os.environ, f"{prefix}_LOG_LEVEL": "verbose"}
    assert "'verbose'" in _one_line_error(run(program, *words, env=env), program, "log_level")
    line = _one_line_error(run(program, *words, "--log-format", "xml"), program, "log_format")
    assert "'xml'" in line and "use 'text' or 'json'" in line


def test_levels_are_case_insensitive_and_json_goes_through_the_shared_formatter() -> None:
    proc = run("fleet-sim", "list", "--log-level", "debug", "--log-format", "json")
    assert proc.returncode == 0, proc.stderr
    assert "demo" in proc.stdout.split()


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _restart(broker: Mosquitto) -> None:
    """Start mosquitto again on the same port and config (the broker came back)."""
    conf = Path(broker.proc.args[-1])
    broker.proc = subprocess.Popen([shutil.which("mosquitto") or "mosquitto", "-c", str(conf)])
    wait_for_port(broker.port)


def _wait_record(prog: Program, stream: str, level: str, text: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    lines = prog.stderr if stream == "stderr" else prog.stdout
    while time.monotonic() < deadline:
        if any(r["level"] == level and text in r["message"] for r in json_records(list(lines))):
            return
        time.sleep(0.1)
    raise AssertionError(f"no {level} record with {text!r}\n{prog.output()}")


def _outage_then_recovery(prog: Program, broker: Mosquitto, http: str) -> None:
    """Stop the broker for a few seconds of retries, bring it back, check the records."""
    _wait_record(prog, "stderr", "INFO", "connected to")
    assert _get(f"{http}/readyz")[0] == 200
    broker.stop()
    _wait_record(prog, "stderr", "DEBUG", "still unreachable")
    time.sleep(3.0)  # several more retries
    status, _ = _get(f"{http}/readyz")
    assert status == 503
    _restart(broker)
    _wait_record(prog, "stderr", "INFO", "reachable again")
    records = json_records(list(prog.stderr))
    unreachable = [r for r in records if "unreachable" in r["message"]]
    warnings = [r for r in unreachable if r["level"] == "WARNING"]
    retries = [r for r in unreachable if r["level"] == "DEBUG"]
    assert len(warnings) == 1, warnings  # once per outage ...
    assert len(retries) >= 2, retries  # ... not once per retry
    assert warnings[0]["message"].startswith(f"broker mqtt://127.0.0.1:{broker.port} unreachable")
    deadline = time.monotonic() + 10
    while _get(f"{http}/readyz")[0] != 200:
        assert time.monotonic() < deadline, "not ready again after the broker came back"
        time.sleep(0.1)


def _clean_sigterm(prog: Program, *, stream: str = "stderr") -> list[dict[str, Any]]:
    code = prog.terminate()
    assert code == 0, prog.output()
    assert "Traceback" not in prog.output()
    return json_records(prog.stderr if stream == "stderr" else prog.stdout)


def test_gateway_json_logs_broker_outage_and_sigterm(tmp_path: Path, built: Any) -> None:
    broker = Mosquitto(tmp_path)
    port = free_port()
    prog = Program(
        "cloud-gateway",
        *("serve", "--port", str(port), "--broker", broker.url),
        *("--db-path", str(tmp_path / "gw.sqlite"), "--blob-dir", str(tmp_path / "blobs")),
        *("--tokens-file", str(write_tokens(tmp_path / "tokens"))),
        *("--trusted-keys", str(built.public_key), "--tick-s", "0.2"),
        *("--log-format", "json", "--log-level", "DEBUG"),
    )
    try:
        prog.wait_for("cloud-gateway listening on")
        _outage_then_recovery(prog, broker, f"http://127.0.0.1:{port}")
        records = _clean_sigterm(prog)
    finally:
        prog.kill()
        broker.stop()
    assert {r["logger"] for r in records} >= {"cloud_gateway.bus", "cloud_gateway.service"}


def test_edge_agent_json_logs_broker_outage_and_sigterm(tmp_path: Path, built: Any) -> None:
    broker = Mosquitto(tmp_path)
    prog = Program(
        "edge-agent",
        *("--broker", broker.url, "--repository", str(built.repository)),
        *("--agent-id", "ops-1", "--http-port", "0", "--heartbeat-s", "0.5"),
        *("--log-format", "json", "--log-level", "DEBUG"),
    )
    try:
        ready = prog.wait_for("edge-agent ready")
        http = ready.split(" http=")[1].split()[0]
        _outage_then_recovery(prog, broker, http)
        records = _clean_sigterm(prog)
    finally:
        prog.kill()
        broker.stop()
    assert any(r["logger"] == "edge_agent.transport.link" for r in records)


def test_offload_server_json_logs_and_sigterm(built: Any) -> None:
    prog = Program(
        "offload-server",
        *("--repository", str(built.repository), "--host", "127.0.0.1"),
        *("--grpc-port", str(free_port()), "--metrics-port", "-1", "--log-format", "json"),
    )
    try:
        prog.wait_for("offload-server ready")
        records = _clean_sigterm(prog, stream="stdout")  # offload-server logs to stdout
    finally:
        prog.kill()
    messages = [r["message"] for r in records]
    assert any("offload-server ready" in m for m in messages)
    assert any(m.startswith("signal received") for m in messages)
    assert {r["level"] for r in records} <= {"INFO", "WARNING"}


HOLD_SCENARIO = """\
name = "ops-hold"
description = "fleet-sim --hold, stopped with SIGTERM while the WAN proxy has connections"
duration_s = 3
drain_s = 3

[stack]
agents = 1
policy = "cloud-only"
wan = { delay_ms = 1 }

[sensors]
count = 4
rate_hz = 10
"""


@pytest.mark.slow
def test_fleet_sim_hold_ends_on_sigterm_without_tracebacks(tmp_path: Path, built: Any) -> None:
    # Before the fix: one asyncio "Exception in callback" traceback per WAN connection
    # still open (Python 3.11's start_server and a cancelled handler task).
    scenario = tmp_path / "hold.toml"
    scenario.write_text(HOLD_SCENARIO)
    prog = Program(
        "fleet-sim",
        *("run", str(scenario), "--hold", "true", "--live", "false"),
        *("--state-dir", str(tmp_path / "state"), "--log-format", "json"),
    )
    try:
        prog.wait_for("holding the stack up", timeout=180)
        children = psutil.Process(prog.proc.pid).children(recursive=True)
        names = " ".join(" ".join(c.cmdline()) for c in children)
        assert "offload-server" in names and "edge-agent" in names, names
        code = prog.terminate()
    finally:
        prog.kill()
    assert code == 130, prog.output()
    assert "Traceback" not in prog.output()
    assert prog.stderr[-1] == "fleet-sim: interrupted; the stack was stopped"
    # Everything else on stderr is a JSON log record or a progress line.
    json_records([line for line in prog.stderr[:-1] if not line.startswith("fleet-sim t=")])
    _, alive = psutil.wait_procs(children, timeout=10)
    assert not alive, alive
