"""The stack launcher starts real processes and leaves none behind (stop, SIGINT, SIGKILL)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from simulators.broker import mosquitto_config
from simulators.edge_device import EdgeDevice
from simulators.runner import ensure_models
from simulators.stack import Stack, StackSpec

TINY = """
name = "tiny"
duration_s = 60
[stack]
agents = 2
[sensors]
count = 20
rate_hz = 10
"""


def _gone(pids: list[int], within: float = 10.0) -> list[int]:
    """Pids still running (not zombies) after ``within`` seconds."""
    deadline = time.monotonic() + within
    alive = pids
    while time.monotonic() < deadline:
        alive = []
        for pid in pids:
            try:
                if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                    alive.append(pid)
            except psutil.NoSuchProcess:
                pass
        if not alive:
            break
        time.sleep(0.1)
    return alive


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return ensure_models(tmp_path_factory.mktemp("models"))


def test_mosquitto_config_has_nodelay_and_loopback() -> None:
    conf = mosquitto_config(1234)
    assert "listener 1234 127.0.0.1" in conf and "set_tcp_nodelay true" in conf


async def test_stack_starts_healthy_and_stops_every_process(
    tmp_path: Path, models_dir: Path
) -> None:
    spec = StackSpec(agents=2, ready_timeout_s=60)
    async with Stack(spec, tmp_path / "work", models_dir) as stack:
        pids = stack.all_pids()
        assert len(pids) == 5  # broker, offload-server, gateway, 2 agents
        assert all(psutil.pid_exists(p) for p in pids)
        assert stack.cloud_target is not None and stack.wan is not None
        # Each agent has its own repository copy and its own site.
        assert stack.agents[0].repository != stack.agents[1].repository
        await stack.kill_agent(1)
        await stack.restart_agent(1)
        pids = stack.all_pids()
    assert _gone(pids) == []


def _fleet_sim(tmp_path: Path, models_dir: Path) -> tuple[subprocess.Popen[bytes], list[int]]:
    scenario = tmp_path / "tiny.toml"
    scenario.write_text(TINY)
    proc = subprocess.Popen(
        [sys.executable, "-m", "simulators", "run", str(scenario), "--state-dir",
         str(tmp_path / "state"), "--models-dir", str(models_dir), "--live", "false"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    # Wait for the whole stack: broker, offload-server, gateway and 2 agents.
    deadline = time.monotonic() + 60
    children: list[int] = []
    while time.monotonic() < deadline and proc.poll() is None:
        children = [c.pid for c in psutil.Process(proc.pid).children(recursive=True)]
        agents_log = list((tmp_path / "state").glob("runs/*/logs/agent-1.log"))
        if len(children) >= 5 and agents_log:
            break
        time.sleep(0.2)
    assert proc.poll() is None, "fleet-sim exited early"
    time.sleep(1.0)
    return proc, [c.pid for c in psutil.Process(proc.pid).children(recursive=True)]


def test_sigint_to_fleet_sim_leaves_no_child(tmp_path: Path, models_dir: Path) -> None:
    proc, children = _fleet_sim(tmp_path, models_dir)
    assert len(children) >= 5
    proc.send_signal(signal.SIGINT)
    assert proc.wait(30) == 130
    assert _gone(children) == []


def test_sigkill_to_fleet_sim_leaves_no_child(tmp_path: Path, models_dir: Path) -> None:
    # No Python cleanup runs on SIGKILL: PR_SET_PDEATHSIG must take the children down.
    proc, children = _fleet_sim(tmp_path, models_dir)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    assert _gone(children) == []


def test_argv_matches_the_real_clis(tmp_path: Path) -> None:
    """The flags fleet-sim passes exist in each process's own build_parser()."""
    from cloud_gateway.cli import build_parser as gateway_parser
    from edge_agent.app.cli import build_parser as agent_parser
    from offload.cli import build_parser as offload_parser

    spec = StackSpec(
        agents=1,
        cloud_model="motion-cloud",
        agent_args=["--max-batch", "8"],
        edge=EdgeDevice(emulate_ms_per_batch=2, emulate_ms_per_item=40, workers=3),
    )
    stack = Stack(spec, tmp_path, tmp_path / "models")
    stack.broker_port, stack.offload_port, stack.gateway_port = 1883, 8001, 8600
    agent = agent_parser().parse_args(stack.agent_argv(0, 8080, tmp_path / "repo")[1:])
    assert (agent.agent_id, agent.site, agent.topics_filter) == (
        "agent-0",
        "site-0",
        "sensors/site-0/+/+",
    )
    assert agent.gateway_url == "http://127.0.0.1:8600" and agent.max_batch == 8
    assert agent.cloud_model == "motion-cloud"
    assert (agent.emulate_ms_per_batch, agent.emulate_ms_per_item, agent.workers) == (2, 40, 3)
    offload = offload_parser().parse_args(stack.offload_argv()[1:])
    assert offload.grpc_port == 8001 and offload.host == "127.0.0.1"
    gateway = gateway_parser().parse_args(stack.gateway_argv()[1:])
    assert gateway.port == 8600 and gateway.cloud == "127.0.0.1:8001"
