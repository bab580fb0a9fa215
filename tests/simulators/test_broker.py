"""The stack's broker choice, and the embedded amqtt broker against real clients.

Every broker here is a real child process started through ``start_broker``; the clients
are real paho clients (``bus.broker.make_client``) and a real ``edge-agent`` process.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt
import psutil
import pytest

from bus.broker import BrokerUrl, make_client
from bus.readings import encode_binary
from models.errors import ConfigError
from shell.cli import given
from simulators.broker import mqtt_handshake, resolve_kind, start_broker, wait_broker
from simulators.cli import build_parser
from simulators.procs import Managed, ProcessSet
from simulators.runner import ensure_models
from simulators.scenario import apply_overrides, load_scenario
from simulators.settings import SimSettings
from simulators.stack import Stack, StackSpec
from tests.edge_agent.conftest import AgentProcess, process_args


@dataclass
class Running:
    procs: ProcessSet
    proc: Managed
    port: int

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"


@pytest.fixture
def amqtt(tmp_path: Path) -> Iterator[Running]:
    procs = ProcessSet(tmp_path / "logs")
    try:
        proc, port = start_broker(procs, tmp_path, kind="amqtt")
        asyncio.run(wait_broker(proc, port, 20))
        yield Running(procs, proc, port)
    finally:
        procs.stop()


class Client:
    """A connected paho client (network loop in a thread) collecting what it receives."""

    def __init__(self, url: str, client_id: str, *, clean_session: bool = True) -> None:
        self.messages: list[mqtt.MQTTMessage] = []
        self._cond = threading.Condition()
        self._acked = threading.Event()
        u = BrokerUrl.parse(url)
        self.c = make_client(u, client_id, clean_session=clean_session)
        self.c.on_message = self._on_message
        self.c.on_subscribe = lambda *a: self._acked.set()
        self.c.connect(u.host, u.port, keepalive=10)
        self.c.loop_start()

    def _on_message(self, c: mqtt.Client, u: Any, msg: mqtt.MQTTMessage) -> None:
        with self._cond:
            self.messages.append(msg)
            self._cond.notify_all()

    def subscribe(self, topic: str, qos: int) -> None:
        self._acked.clear()
        self.c.subscribe(topic, qos)
        assert self._acked.wait(5), "SUBACK not received"

    def wait_for(self, n: int, timeout: float = 10.0) -> list[mqtt.MQTTMessage]:
        end = time.monotonic() + timeout
        with self._cond:
            while len(self.messages) < n and time.monotonic() < end:
                self._cond.wait(0.05)
            return list(self.messages)

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


@pytest.fixture
def clients() -> Iterator[Any]:
    made: list[Client] = []

    def factory(url: str, client_id: str, **kw: Any) -> Client:
        made.append(Client(url, client_id, **kw))
        return made[-1]

    yield factory
    for c in made:
        c.close()


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _wait_gone(pid: int, within: float = 10.0) -> bool:
    deadline = time.monotonic() + within
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not _alive(pid)


def test_qos0_and_qos1_publish_and_subscribe(amqtt: Running, clients: Any) -> None:
    sub0 = clients(amqtt.url, "sub-q0")
    sub0.subscribe("t/#", qos=0)
    sub1 = clients(amqtt.url, "sub-q1")
    sub1.subscribe("t/#", qos=1)
    pub = clients(amqtt.url, "pub-1")
    sent = [(f"t/q{i % 2}/{i}", f"m{i}".encode(), i % 2) for i in range(40)]
    infos = [pub.c.publish(topic, payload, qos=qos) for topic, payload, qos in sent]
    for info in infos:
        info.wait_for_publish(5)
        assert info.is_published()  # QoS 1: the broker PUBACKed it
    expected = sorted((t, p) for t, p, _ in sent)
    got0, got1 = sub0.wait_for(len(sent)), sub1.wait_for(len(sent))
    assert sorted((m.topic, m.payload) for m in got0) == expected
    assert sorted((m.topic, m.payload) for m in got1) == expected
    assert {m.qos for m in got0} == {0}
    # QoS-1 publishes reach a QoS-1 subscriber as QoS 1. (amqtt also upgrades QoS-0
    # publishes to the subscription's QoS, where MQTT says min(pub, sub): not relied on.)
    assert {m.qos for m in got1 if m.topic.startswith("t/q1/")} == {1}


def test_persistent_session_gets_qos1_published_while_away(amqtt: Running, clients: Any) -> None:
    """What an edge agent relies on across restarts (clean_session=False, same id).

    amqtt's stock anonymous auth would drop these: it queues nothing for anonymous sessions.
    """
    first = Client(amqtt.url, "agent-x", clean_session=False)
    first.subscribe("p/#", qos=1)
    first.close()
    pub = clients(amqtt.url, "pub-2")
    for i in range(5):
        pub.c.publish(f"p/{i}", str(i).encode(), qos=1).wait_for_publish(5)
    back = clients(amqtt.url, "agent-x", clean_session=False)
    got = back.wait_for(5)
    assert sorted(m.payload for m in got) == [b"0", b"1", b"2", b"3", b"4"]


async def test_auto_without_mosquitto_warns_and_starts_amqtt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    procs = ProcessSet(tmp_path / "logs")
    try:
        with caplog.at_level(logging.WARNING, logger="simulators.broker"):
            proc, port = start_broker(procs, tmp_path, kind="auto")
        await wait_broker(proc, port, 20)
        assert proc.name == "amqtt"
        assert any("mosquitto not found on PATH" in r.getMessage() for r in caplog.records)
        assert await mqtt_handshake(port) == 0
    finally:
        procs.stop()


def test_explicit_kinds_are_never_swapped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="simulators.broker"):
        assert resolve_kind("auto", "/opt/bin/mosquitto") == "mosquitto"
        assert resolve_kind("amqtt", "/opt/bin/mosquitto") == "amqtt"
        assert resolve_kind("amqtt", None) == "amqtt"
    assert not caplog.records  # only auto falling back warns
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ConfigError, match="not on PATH"):
        start_broker(ProcessSet(tmp_path / "logs"), tmp_path, kind="mosquitto")


async def test_amqtt_process_is_gone_after_teardown(amqtt: Running) -> None:
    pid = amqtt.proc.pid
    assert _alive(pid)
    amqtt.procs.stop()
    assert _wait_gone(pid), "amqtt broker outlived ProcessSet.stop()"
    assert await mqtt_handshake(amqtt.port, timeout_s=0.5) is None


_PARENT = """
import asyncio, sys
from pathlib import Path
from simulators.broker import start_broker, wait_broker
from simulators.procs import ProcessSet

work = Path(sys.argv[1])
procs = ProcessSet(work / "logs")
proc, port = start_broker(procs, work, kind="amqtt")
asyncio.run(wait_broker(proc, port, 20))
print(proc.pid, flush=True)
sys.stdin.read()
"""


def test_amqtt_dies_with_a_sigkilled_parent(tmp_path: Path) -> None:
    parent = subprocess.Popen(
        [sys.executable, "-c", _PARENT, str(tmp_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        line = parent.stdout.readline()  # type: ignore[union-attr]
        assert line.strip().isdigit(), f"parent did not start the broker: {line!r}"
        pid = int(line)
        assert _alive(pid)
        os.kill(parent.pid, signal.SIGKILL)  # no Python cleanup runs: PDEATHSIG must act
        parent.wait(10)
        assert _wait_gone(pid), "amqtt broker orphaned by a SIGKILLed fleet-sim"
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait(10)


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return ensure_models(tmp_path_factory.mktemp("models"))


def _start_agent(url: str, repo: Path, prefix: str) -> AgentProcess:
    agent = AgentProcess(
        process_args(f"{prefix}-agent", url, repo, prefix, "--log-level", "WARNING")
    )
    try:
        agent.wait_ready(30)
    except BaseException:
        agent.stop("kill")
        raise
    return agent


@pytest.mark.slow
def test_edge_agent_answers_readings_through_amqtt(
    amqtt: Running, models_dir: Path, clients: Any
) -> None:
    """A real edge-agent process on the embedded broker, across an agent restart.

    Readings published while the agent is down wait in its persistent session (QoS 1,
    clean_session=False, client id = agent id) and are answered when it returns.
    """
    prefix = "amq"
    results = clients(amqtt.url, "results-sub")
    results.subscribe(f"{prefix}/results/#", qos=1)
    pub = clients(amqtt.url, "sensor-pub")
    windows = np.random.default_rng(3).normal(size=(30, 100, 6)).astype(np.float32)

    def send(indices: range) -> None:
        for i in indices:
            payload = encode_binary(windows[i], 99 + 100 * i, time.time())
            topic = f"{prefix}/sensors/s/d{i % 4}/w"
            pub.c.publish(topic, payload, qos=1).wait_for_publish(5)

    agent = _start_agent(amqtt.url, models_dir / "repository", prefix)
    try:
        send(range(20))
        got = results.wait_for(20, timeout=15)
        assert len(got) == 20, agent.lines[-20:]
    finally:
        assert agent.stop() == 0, agent.lines[-20:]
    send(range(20, 30))  # nobody connected on the agent's id now
    agent = _start_agent(amqtt.url, models_dir / "repository", prefix)
    try:
        got = results.wait_for(30, timeout=15)
        time.sleep(0.3)  # a duplicate would arrive right behind the last answer
        got = results.wait_for(31, timeout=0)
    finally:
        assert agent.stop() == 0, agent.lines[-20:]
    answers = sorted((r["device"], r["seq"]) for r in (json.loads(m.payload) for m in got))
    assert answers == sorted((f"d{i % 4}", 99 + 100 * i) for i in range(30))
    assert {json.loads(m.payload)["model"] for m in got} == {"motion-edge"}


def test_broker_kind_flag_and_env_reach_the_stack_spec(monkeypatch: pytest.MonkeyPatch) -> None:
    def stack_kind(argv: list[str]) -> str:
        args = build_parser().parse_args(argv)
        settings = SimSettings(**given(args, skip={"command"}))
        return apply_overrides(load_scenario(settings.scenario), settings).stack.broker_kind

    assert stack_kind(["run", "demo"]) == "auto"
    assert stack_kind(["run", "demo", "--broker-kind", "amqtt"]) == "amqtt"
    monkeypatch.setenv("SIM_BROKER_KIND", "mosquitto")
    assert stack_kind(["run", "demo"]) == "mosquitto"
    assert stack_kind(["run", "demo", "--broker-kind", "amqtt"]) == "amqtt"  # flag wins
    with pytest.raises(SystemExit):
        build_parser().parse_args(["run", "demo", "--broker-kind", "hivemq"])


@pytest.mark.slow
async def test_stack_runs_an_agent_on_amqtt_and_stops_it(tmp_path: Path, models_dir: Path) -> None:
    spec = StackSpec(agents=1, offload=False, gateway=False, broker_kind="amqtt")
    async with Stack(spec, tmp_path / "work", models_dir) as stack:
        assert [c.name for c in stack.procs.children] == ["amqtt", "agent-0"]
        assert await mqtt_handshake(stack.broker_port) == 0
        pids = stack.all_pids()
    assert [p for p in pids if not _wait_gone(p)] == []
