"""Zero-downtime model swap under traffic; a failed swap keeps the old version serving."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from models.errors import EdgecloudError, NotFound
from models.recipes import build_model
from models.repository import ModelRepository
from models.signing import load_trusted_keys
from tests.edge_agent.conftest import agent_settings, publisher, reading


async def test_swap_under_traffic_loses_nothing(
    mosquitto: Any,
    repo: Path,
    built_models: Any,
    topic_prefix: str,
    make_agent: Any,
    subscriber: Any,
    tmp_path: Path,
) -> None:
    bundle = build_model("motion-edge", 2, tmp_path / "b", built_models.key)
    ModelRepository(repo, check=False).install(bundle, load_trusted_keys(built_models.public_key))
    agent = await make_agent(agent_settings(mosquitto.url, repo, topic_prefix))
    results = subscriber(f"{topic_prefix}/results/#")
    pub = publisher(mosquitto.url)
    rng = np.random.default_rng(1)
    n = 600
    try:
        for seq in range(n):
            pub.publish(f"{topic_prefix}/sensors/s/d/x", reading(seq, rng.normal(size=6)), qos=1)
            if seq == 300:
                manifest = await agent.models.swap("motion-edge", 2)
                assert manifest.version == 2
            if seq % 50 == 0:
                await asyncio.sleep(0.01)
        expected = list(range(99, n, 10))
        got = await asyncio.to_thread(results.wait_for, len(expected), 15)
    finally:
        pub.disconnect()
        pub.loop_stop()
    assert sorted(r["seq"] for r in got) == expected
    versions = [r["version"] for r in sorted(got, key=lambda r: r["seq"])]
    assert versions[0] == 1 and versions[-1] == 2 and versions == sorted(versions)
    assert agent.models.active[0].version == 2
    assert [h["event"] for h in agent.models.history] == ["loaded", "swapped"]

    with pytest.raises(NotFound):
        await agent.models.swap("motion-edge", 99)
    assert agent.models.active[0].version == 2  # the old one keeps serving
    with pytest.raises(EdgecloudError):
        await agent.models.swap("no-such-model", 1)
    assert agent.status()["model"]["version"] == 2


async def test_load_times_each_warm_up_size_for_the_router(repo: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from edge_agent.model.slot import ModelSlot
    from models.backends.base import BackendOptions

    with ThreadPoolExecutor(1) as pool:
        slot = ModelSlot(
            repo,
            pool,
            kind="onnxruntime",
            options=BackendOptions(emulate_ms_per_batch=20.0),
            warmup_batches=(1, 8),
        )
        await slot.load("motion-edge")
        times = slot.loaded.warm_times
        assert set(times) == {1, 8}
        # The emulated device's extra time shows up: the router sees a slow node at once.
        assert all(t >= 0.02 for t in times.values())
        slot.close()
