"""Fixtures for edge-agent tests: built-in models, agents in-process and as subprocesses."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt
import pytest

from bus.broker import BrokerUrl, make_client
from edge_agent.app.agent import EdgeAgent
from edge_agent.app.settings import EdgeSettings
from models.recipes import build_all


@pytest.fixture(scope="session")
def built_models(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """motion-edge, motion-cloud and vibration-anomaly v1, installed and active."""
    return build_all(tmp_path_factory.mktemp("edge-models"))


@pytest.fixture
def repo(built_models: Any, tmp_path: Path) -> Path:
    """A private copy of the repository (tests may install versions into it)."""
    import shutil

    dest = tmp_path / "repository"
    shutil.copytree(built_models.repository, dest)
    return dest


def agent_settings(broker_url: str, repository: Path, prefix: str, **kw: Any) -> EdgeSettings:
    base: dict[str, Any] = {
        "agent_id": f"{prefix}-agent",
        "site": "site-1",
        "broker": broker_url,
        "repository": repository,
        "model": "motion-edge",
        "topics_filter": f"{prefix}/sensors/+/+/+",
        "topic_prefix": prefix,
        "http_port": 0,
        "policy": "local-only",
        "heartbeat_s": 0.5,
    }
    base.update(kw)
    return EdgeSettings(**base)


@pytest.fixture
async def make_agent() -> AsyncIterator[Any]:
    agents: list[EdgeAgent] = []

    async def factory(settings: EdgeSettings) -> EdgeAgent:
        agent = EdgeAgent(settings)
        await agent.start()
        agents.append(agent)
        return agent

    yield factory
    for a in agents:
        await a.stop()


class Subscriber:
    """A paho subscriber collecting (topic, payload) pairs in a thread."""

    def __init__(self, url: str, topic: str, qos: int = 1) -> None:
        self.messages: list[tuple[str, bytes]] = []
        self._cond = threading.Condition()
        self._sub = threading.Event()
        self.client = make_client(BrokerUrl.parse(url), f"sub-{time.monotonic_ns()}")
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *a: self._sub.set()
        self.client.on_connect = lambda c, *a: c.subscribe(topic, qos)
        u = BrokerUrl.parse(url)
        self.client.connect(u.host, u.port)
        self.client.loop_start()
        assert self._sub.wait(5), "subscription not acknowledged"

    def _on_message(self, c: mqtt.Client, u: Any, msg: mqtt.MQTTMessage) -> None:
        with self._cond:
            self.messages.append((msg.topic, msg.payload))
            self._cond.notify_all()

    def json(self) -> list[dict[str, Any]]:
        with self._cond:
            return [json.loads(p) for _, p in self.messages]

    def wait_for(self, n: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        end = time.monotonic() + timeout
        with self._cond:
            while len(self.messages) < n and time.monotonic() < end:
                self._cond.wait(0.05)
        return self.json()

    def close(self) -> None:
        self.client.disconnect()  # wakes paho's thread; loop_stop then returns at once
        self.client.loop_stop()


@pytest.fixture
def subscriber(mosquitto: Any) -> Iterator[Any]:
    subs: list[Subscriber] = []

    def factory(topic: str, qos: int = 1) -> Subscriber:
        s = Subscriber(mosquitto.url, topic, qos)
        subs.append(s)
        return s

    yield factory
    for s in subs:
        s.close()


def publisher(url: str) -> mqtt.Client:
    u = BrokerUrl.parse(url)
    c = make_client(u, f"pub-{time.monotonic_ns()}")
    c.connect(u.host, u.port)
    c.loop_start()
    return c


def reading(seq: int, values: np.ndarray | list[float], ts: float | None = None) -> bytes:
    vals = [float(v) for v in values]
    return json.dumps(
        {"ts": ts if ts is not None else time.time(), "seq": seq, "values": vals}
    ).encode()


def process_args(
    agent_id: str, broker_url: str, repository: Path, prefix: str, *extra: str
) -> list[str]:
    """edge-agent flags for a process on ``broker_url`` reading ``{prefix}/sensors/+/+/+``
    (serving motion-edge unless ``extra`` names models)."""
    model = [] if "--model" in extra else ["--model", "motion-edge"]
    return [
        *model,
        "--agent-id",
        agent_id,
        "--broker",
        broker_url,
        "--repository",
        str(repository),
        "--topic-prefix",
        prefix,
        "--topics-filter",
        f"{prefix}/sensors/+/+/+",
        "--http-port",
        "0",
        *extra,
    ]


class AgentProcess:
    """``edge-agent`` as a subprocess; ``port`` is its HTTP port once ready."""

    def __init__(self, args: list[str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "edge_agent", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        self.port: int | None = None
        self._ready = threading.Event()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        for line in self.proc.stdout:  # type: ignore[union-attr]
            self.lines.append(line.rstrip())
            m = re.search(r"edge-agent ready .*http=http://[^:]+:(\d+)", line)
            if m:
                self.port = int(m.group(1))
                self._ready.set()
        self._ready.set()

    def wait_ready(self, timeout: float = 20.0) -> None:
        if not self._ready.wait(timeout) or self.port is None:
            raise AssertionError("agent not ready:\n" + "\n".join(self.lines[-30:]))

    def status(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/api/status", timeout=5) as r:
            return json.loads(r.read())

    def stop(self, sig: str = "term") -> int:
        if self.proc.poll() is None:
            self.proc.terminate() if sig == "term" else self.proc.kill()
        return self.proc.wait(15)


def install_heavy_model(repository: Path, repeats: int = 24, name: str = "motion-heavy") -> Path:
    """A deliberately slow classifier with motion-edge's interface (for overload tests).

    ``repeats`` dense 600x600 layers per window make local capacity a few hundred
    windows/s, far below what a fast cloud model handles.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from models.repository import ModelRepository

    rng = np.random.default_rng(5)
    w = numpy_helper.from_array(
        (rng.standard_normal((600, 600)) / np.sqrt(600)).astype(np.float32), "w"
    )
    head = numpy_helper.from_array(rng.standard_normal((600, 4)).astype(np.float32), "head")
    nodes = [helper.make_node("Flatten", ["input"], ["h0"], axis=1)]
    for i in range(repeats):
        nodes.append(helper.make_node("MatMul", [f"h{i}", "w"], [f"m{i}"]))
        nodes.append(helper.make_node("Tanh", [f"m{i}"], [f"h{i + 1}"]))
    nodes.append(helper.make_node("MatMul", [f"h{repeats}", "head"], ["logits"]))
    nodes.append(helper.make_node("Softmax", ["logits"], ["probabilities"], axis=-1))
    graph = helper.make_graph(
        nodes,
        "heavy",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["n", 100, 6])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["n", 4])],
        initializer=[w, head],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    base = ModelRepository(repository, check=False).manifest("motion-edge")
    manifest = base.model_copy(update={"name": name, "version": 1, "files": {}})
    vdir = repository / name / "1"
    vdir.mkdir(parents=True)
    onnx.save(model, vdir / "model.onnx")
    (vdir / "manifest.json").write_text(manifest.model_dump_json())
    (repository / name / "active").write_text("1")
    return vdir / "model.onnx"


class OffloadServer:
    """A real ``offload-server`` subprocess on a free port."""

    def __init__(self, repository: Path, *extra: str) -> None:
        from tests.conftest import free_port

        self.port = free_port()
        self.target = f"127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "offload",
                "--repository",
                str(repository),
                "--host",
                "127.0.0.1",
                "--grpc-port",
                str(self.port),
                "--metrics-port",
                "-1",
                "--http-port",
                "-1",
                "--log-level",
                "WARNING",
                *extra,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        ready = threading.Event()

        def pump() -> None:
            for line in self.proc.stdout:  # type: ignore[union-attr]
                self.lines.append(line)
                if "offload-server ready" in line:
                    ready.set()
            ready.set()

        threading.Thread(target=pump, daemon=True).start()
        if not ready.wait(30) or self.proc.poll() is not None:
            raise AssertionError("offload-server not ready:\n" + "".join(self.lines))

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
