"""The rollout engine on a fake clock, on the suite's database (SQLite, or PostgreSQL in
the second pass): real registry and fleet state, hand-made heartbeats, desired state
captured instead of published. The fixtures are re-exported by conftest.py."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bus.topics import Topics
from cloud_gateway.blobs import DirectoryBlobStore
from cloud_gateway.db import Database, open_database
from cloud_gateway.fleet import Fleet as FleetState
from cloud_gateway.registry import Registry
from cloud_gateway.rollouts import RolloutEngine
from cloud_gateway.schemas import RolloutRequest, StatusReport
from models import signing
from tests.cloud_gateway.bundles import BundleSet


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make_engine(db: Database, registry: Registry, clock: Clock, published: list) -> RolloutEngine:
    return RolloutEngine(
        db,
        registry,
        FleetState(db, 15.0, clock),
        Topics(),
        lambda topic, payload: published.append((topic, payload)),
        lambda: "http://127.0.0.1:9",
        clock=clock,
    )


@pytest.fixture
def db_url(tmp_path: Path, database_url: str | None) -> str:
    """The suite's database: a SQLite file, or PostgreSQL in the second pass."""
    return database_url or f"sqlite:///{tmp_path / 'gw.sqlite'}"


@pytest.fixture
async def clocked(
    tmp_path: Path, bundle_set: BundleSet, db_url: str
) -> AsyncIterator[tuple[RolloutEngine, Clock, list]]:
    db = open_database(db_url)
    keys = signing.load_trusted_keys(bundle_set.trusted_dir)
    registry = Registry(db, DirectoryBlobStore(tmp_path / "blobs"), keys, max_bytes=1 << 28)
    for version in (1, 2):
        data = bundle_set.good[version].read_bytes()

        async def chunks(data: bytes = data) -> AsyncIterator[bytes]:
            yield data

        await registry.upload(chunks())
    clock = Clock()
    published: list[tuple[str, bytes]] = []
    yield make_engine(db, registry, clock, published), clock, published
    db.close()


def beat(engine: RolloutEngine, agent: str, version: int, p99: float, n: int) -> None:
    engine.fleet.apply(
        StatusReport(
            agent_id=agent,
            site="s",
            models={"motion-edge": {"version": version, "state": "serving"}},
            metrics={"inferences": n, "errors": 0, "nan_outputs": 0, "p99_ms": p99},
        )
    )


async def wave_one_baking(engine: RolloutEngine, clock: Clock) -> str:
    """Four agents at 4 ms; wave 1 (e0) is issued, swaps and starts baking."""
    for i in range(4):
        beat(engine, f"e{i}", 1, 4.0, 1000)
    req = RolloutRequest(model="motion-edge", version=2, waves=["1", "100%"], bake_s=10.0)
    rid = engine.start(req)["id"]
    await engine.tick()  # wave 1 issued
    clock.now += 1
    beat(engine, "e0", 2, 4.0, 1000)
    await engine.tick()  # e0 serves v2: converged, its window starts now
    assert engine.get(rid, detail=False)["state"] == "running"
    return rid
