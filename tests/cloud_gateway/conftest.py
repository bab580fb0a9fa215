"""Gateway fixtures: bundles, tokens, and a real gateway (HTTP + mosquitto + SQLite).

``EDGECLOUD_TEST_DATABASE=postgresql`` runs every gateway of these tests on a real
PostgreSQL server instead (one server per session, a fresh database per test):
``EDGECLOUD_TEST_DATABASE=postgresql pytest tests/cloud_gateway``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from cloud_gateway.service import Gateway, serve
from cloud_gateway.settings import GatewaySettings
from tests.cloud_gateway.bundles import BundleSet, build_set
from tests.cloud_gateway.clocked import clocked, db_url  # noqa: F401 (fixtures for all modules)

TOKENS = {"admin": "admin-token-1", "agent": "agent-token-1", "viewer": "viewer-token-1"}


def auth(role: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKENS[role]}"}


def gateway_keys(gw: Gateway) -> dict[str, Any]:
    """The gateway's desired-state public key, as an agent trusts it (--gateway-key)."""
    from models.signing import key_id

    public = gw.desired_key.public_key()
    return {key_id(public): public}


def document(payload: bytes) -> dict[str, Any]:
    """The desired-state document inside a signed retained message."""
    return json.loads(json.loads(payload)["document"])


@pytest.fixture(scope="session")
def bundle_set(tmp_path_factory: pytest.TempPathFactory) -> BundleSet:
    return build_set(tmp_path_factory.mktemp("bundles"))


@pytest.fixture
def tokens_file(tmp_path: Path) -> Path:
    path = tmp_path / "tokens"
    path.write_text("".join(f"{role} {token}\n" for role, token in TOKENS.items()))
    return path


GatewayFactory = Callable[..., contextlib.AbstractAsyncContextManager[Gateway]]

_databases = itertools.count()


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str | None]:
    """A PostgreSQL server's URL when the suite runs on PostgreSQL, else None."""
    if os.environ.get("EDGECLOUD_TEST_DATABASE", "sqlite") != "postgresql":
        yield None
        return
    from tests.cloud_gateway.postgres import postgres_server

    with postgres_server() as url:
        yield url


@pytest.fixture
def database_url(postgres_url: str | None) -> str | None:
    """A fresh, empty database for one test (None: the SQLite file of db_path)."""
    if postgres_url is None:
        return None
    import psycopg

    name = f"gw{next(_databases)}"
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f"create database {name}")
    return postgres_url.rsplit("/", 1)[0] + f"/{name}"


@pytest.fixture
def gateway_settings(
    tmp_path: Path,
    mosquitto: Any,
    topic_prefix: str,
    bundle_set: BundleSet,
    tokens_file: Path,
    database_url: str | None,
) -> Callable[..., GatewaySettings]:
    def make(**overrides: Any) -> GatewaySettings:
        values: dict[str, Any] = {
            "host": "127.0.0.1",
            "port": 0,
            "db_path": tmp_path / "gw" / "gateway.sqlite",
            "database_url": database_url,
            "blob_dir": tmp_path / "gw" / "blobs",
            "desired_signing_key": tmp_path / "gw" / "desired.key",
            "broker": mosquitto.url,
            "topic_prefix": topic_prefix,
            "trusted_keys": bundle_set.trusted_dir,
            "tokens_file": tokens_file,
            "heartbeat_timeout_s": 5.0,
            "tick_s": 0.1,
        }
        values.update(overrides)
        return GatewaySettings(**values)

    return make


@pytest.fixture
async def gateway(gateway_settings: Callable[..., GatewaySettings]) -> AsyncIterator[Gateway]:
    async with serve(gateway_settings()) as gw:
        yield gw


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def push(http: aiohttp.ClientSession, gw: Gateway, *bundles: Path) -> dict[str, Any]:
    """Push each bundle in turn as admin; returns the registry's answer to the last."""
    body: dict[str, Any] = {}
    for bundle in bundles:
        data = await asyncio.to_thread(bundle.read_bytes)
        async with http.post(f"{gw.url}/api/v1/models", data=data, headers=auth("admin")) as resp:
            body = await resp.json()
            assert resp.status in (200, 201), body
    return body
