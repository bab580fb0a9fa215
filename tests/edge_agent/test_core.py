"""AgentCore on the MQTT thread's side: mid-burst flushes and cached service estimates."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from edge_agent.agent import EdgeAgent
from edge_agent.settings import EdgeSettings


async def _core_agent(repo: Path, **kw: Any) -> tuple[EdgeAgent, list[tuple[str, str]]]:
    """A real agent (real model, real dispatcher) whose publishes are captured, no broker."""
    s = EdgeSettings(
        repository=repo,
        model="motion-edge",
        policy="local-only",
        http_port=0,
        broker="mqtt://127.0.0.1:1",
        **kw,
    )
    agent = EdgeAgent(s)
    agent.core.loop = asyncio.get_running_loop()
    agent._build_routing()
    await agent.models.load("motion-edge", None)
    sent: list[tuple[str, str]] = []
    agent.core.publisher = type(
        "Capture", (), {"publish": lambda self, t, p, q=0, r=False: sent.append((t, p))}
    )()
    return agent, sent


def _fill(agent: EdgeAgent, devices: int, arrival: float) -> None:
    """One full window per device (the last reading of each completes it)."""
    rng = np.random.default_rng(3)
    for seq in range(100):
        for d in range(devices):
            row = rng.normal(size=6).round(4).tolist()
            payload = json.dumps({"ts": 1.0, "seq": seq, "values": row}).encode()
            agent.core.ingest(f"sensors/s/d{d}/imu", payload, arrival)


async def test_mid_burst_answers_windows_that_waited(repo: Path) -> None:
    agent, sent = await _core_agent(repo, max_wait_ms=50.0)
    try:
        # Teach the service model that batches are cheap, so they may run inline.
        agent.dispatcher.service.observe(8, 0.0002)
        agent.dispatcher._est_expiry = 0.0
        _fill(agent, 8, arrival=time.monotonic())
        agent.core.mid_burst()  # just arrived: keeps batching
        assert sent == [] and len(agent.core._pending) == 8
        agent.core._pending[0].arrival -= 0.06  # the oldest has now waited > max_wait
        agent.core.mid_burst()
        assert len(sent) == 8 and not agent.core._pending
        assert {json.loads(p)["device"] for _, p in sent} == {f"d{d}" for d in range(8)}
        assert all(json.loads(p)["output"]["label"] is not None for _, p in sent)
    finally:
        await agent.stop()


async def test_service_estimates_are_cached_briefly(repo: Path) -> None:
    agent, _ = await _core_agent(repo)
    try:
        d = agent.dispatcher
        for n in range(1, 40):
            d.service.observe(n, 0.0001 * n)
        first = d.estimate(64)  # an unseen size: a fit over every size seen
        assert first == d.service.estimate(64)
        d.service.observe(64, 0.5)
        assert d.estimate(64) == first  # cached: the fit is not redone per batch
        d._est_expiry = 0.0  # the cache's time is up
        assert d.estimate(64) == d.service.estimate(64) == 0.5
    finally:
        await agent.stop()
