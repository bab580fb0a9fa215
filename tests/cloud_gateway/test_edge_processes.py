"""Rollouts onto real ``edge-agent`` processes under steady sensor load.

Each agent is a subprocess with its own repository, stream and gateway token; a
publisher thread sends sequenced readings all along, and every result's ``seq`` is
checked so a dropped or failed inference during a swap shows up as a gap. The default
fleet is small for a two-core CI box; ``EDGECLOUD_FLEET_AGENTS=20`` runs the full
twenty-agent acceptance scenario.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cloud_gateway.service import Gateway
from models import signing
from models.repository import ModelRepository
from tests.cloud_gateway.bundles import MODEL, BundleSet
from tests.cloud_gateway.conftest import TOKENS, push
from tests.cloud_gateway.mqttutil import Peer, until
from tests.edge_agent.conftest import AgentProcess, publisher, reading

N_AGENTS = int(os.environ.get("EDGECLOUD_FLEET_AGENTS", "4"))
RATE_HZ = 50.0  # per stream; window 100 / hop 10 -> 5 inferences/s per agent


class Load:
    """One stream per agent, published at a steady rate from a thread."""

    def __init__(self, url: str, prefix: str, agents: list[str]) -> None:
        self.client = publisher(url)
        self.topics = [f"{prefix}/sensors/{a}/dev/acc" for a in agents]
        self.seq = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        rng = np.random.default_rng(1)
        next_t = time.monotonic()
        while not self._stop.is_set():
            for topic in self.topics:
                self.client.publish(topic, reading(self.seq, rng.normal(size=6)), qos=1)
            self.seq += 1
            next_t += 1.0 / RATE_HZ
            time.sleep(max(0.0, next_t - time.monotonic()))

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> int:
        self._stop.set()
        self._thread.join(5)
        self.client.loop_stop()
        return self.seq


@pytest.fixture
def fleet(
    gateway: Gateway, bundle_set: BundleSet, mosquitto: Any, topic_prefix: str, tmp_path: Path
) -> Iterator[list[AgentProcess]]:
    keys = signing.load_trusted_keys(bundle_set.trusted_dir)
    token_file = tmp_path / "agent.token"
    token_file.write_text(TOKENS["agent"])
    procs: list[AgentProcess] = []
    try:
        for i in range(N_AGENTS):
            agent_id = f"{topic_prefix}-e{i:02d}"
            root = tmp_path / f"repo{i}"
            ModelRepository(root, trusted_keys=keys, check=False).install(bundle_set.good[1])
            procs.append(
                AgentProcess(
                    [
                        "--agent-id",
                        agent_id,
                        "--site",
                        agent_id,
                        "--broker",
                        mosquitto.url,
                        "--repository",
                        str(root),
                        "--model",
                        MODEL,
                        "--topic-prefix",
                        topic_prefix,
                        "--topics-filter",
                        f"{topic_prefix}/sensors/{agent_id}/+/+",
                        "--http-port",
                        "0",
                        "--policy",
                        "local-only",
                        "--heartbeat-s",
                        "0.5",
                        "--gateway-token-file",
                        str(token_file),
                        "--trusted-keys",
                        str(bundle_set.trusted_dir),
                        "--gateway-url",
                        gateway.url,
                        "--gateway-key",
                        str(gateway.settings.signing_key_path().with_suffix(".pub")),
                        "--log-level",
                        "WARNING",
                    ]
                )
            )
        for p in procs:
            p.wait_ready(60)
        yield procs
    finally:
        for p in procs:
            p.stop()


def _results(results: Peer, prefix: str) -> dict[str, list[dict[str, Any]]]:
    by_agent: dict[str, list[dict[str, Any]]] = {}
    with results.lock:
        messages = list(results.messages)
    for topic, payload, _ in messages:
        agent = topic.split("/")[2]
        by_agent.setdefault(agent, []).append(json.loads(payload))
    return by_agent


def _online(gw: Gateway, prefix: str) -> list[dict[str, Any]]:
    return [r for r in gw.fleet.all() if r["online"] and r["agent_id"].startswith(prefix)]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("version", "expect"), [(2, "succeeded"), (3, "rolled_back")], ids=["canary", "nan-gate"]
)
async def test_canary_on_edge_agent_processes_under_load(
    gateway: Gateway,
    http: Any,
    bundle_set: BundleSet,
    fleet: list[AgentProcess],
    mosquitto: Any,
    topic_prefix: str,
    version: int,
    expect: str,
) -> None:
    await push(http, gateway, bundle_set.good[1], bundle_set.good[version])
    agents = [f"{topic_prefix}-e{i:02d}" for i in range(N_AGENTS)]
    await until(lambda: len(_online(gateway, topic_prefix)) == N_AGENTS, 30, "fleet online")
    results = Peer(mosquitto.url)
    results.subscribe(f"{topic_prefix}/results/#")
    load = Load(mosquitto.url, topic_prefix, agents)
    load.start()
    try:
        await until(lambda: len(_results(results, topic_prefix)) == N_AGENTS, 30, "results")
        body = {
            "model": MODEL,
            "version": version,
            "waves": ["25%", "100%"],
            "bake_s": 2.0,
            "gates": {"max_p99_ratio": None},
            "wave_timeout_s": 60,
        }
        t0 = time.monotonic()
        async with http.post(
            f"{gateway.url}/api/v1/rollouts",
            json=body,
            headers={"Authorization": f"Bearer {TOKENS['admin']}"},
        ) as resp:
            rid = (await resp.json())["id"]
        await until(
            lambda: gateway.engine.get(rid, detail=False)["state"] != "running", 90, "rollout"
        )
        converge_s = time.monotonic() - t0
        done = gateway.engine.get(rid)
        assert done["state"] == expect, done["reason"]
        if expect == "rolled_back":
            assert "NaN outputs" in done["reason"] and "wave 1" in done["reason"]
        final = version if expect == "succeeded" else 1
        await until(
            lambda: all(
                json.loads(r["models"])[MODEL]["version"] == final
                for r in _online(gateway, topic_prefix)
            ),
            30,
            f"all agents on v{final}",
        )
        await asyncio.sleep(1.0)
    finally:
        sent = load.stop()
    await asyncio.sleep(2.0)  # let the last windows come back
    by_agent = _results(results, topic_prefix)
    results.close()
    first_wave = {a["agent_id"] for a in done["agents"] if a["wave"] == 1}
    for agent in agents:
        got = sorted(by_agent[agent], key=lambda r: r["seq"])
        seqs = [r["seq"] for r in got]
        assert seqs == list(range(seqs[0], seqs[0] + 10 * len(seqs), 10)), f"{agent}: gap"
        assert seqs[-1] >= sent - 30, f"{agent}: tail missing ({seqs[-1]} of {sent})"
        versions = {r["version"] for r in got}
        if expect == "succeeded":
            assert versions == {1, 2}, (agent, versions)
        elif agent not in first_wave:
            assert versions == {1}, f"{agent} outside the wave ran v{version}"
    print(
        f"\n{N_AGENTS} edge-agent processes: rollout {expect} in {converge_s:.1f} s; "
        f"{sum(len(v) for v in by_agent.values())} results, no gaps"
    )
