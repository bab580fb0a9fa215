"""The gateway process core: wires storage, fleet, rollouts, MQTT and the HTTP server.

``async with serve(settings) as gw:`` runs a complete gateway (tests use it on a free
port); ``cloud-gateway serve`` runs the same thing until a signal arrives.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from aiohttp import web

from cloud_gateway.app import make_app
from cloud_gateway.auth import Role, TokenStore
from cloud_gateway.blobs import DirectoryBlobStore
from cloud_gateway.bus import Bus
from cloud_gateway.cloud import CloudTier
from cloud_gateway.config import ConfigTwins
from cloud_gateway.db import open_database, redact
from cloud_gateway.fleet import Fleet
from cloud_gateway.leader import Leadership
from cloud_gateway.metrics import GatewayMetrics
from cloud_gateway.openapi import build_openapi
from cloud_gateway.registry import Registry
from cloud_gateway.rollouts import RolloutEngine
from cloud_gateway.settings import GatewaySettings
from models.errors import ConfigError

log = logging.getLogger(__name__)

#: Heartbeats arriving over MQTT are written together, at most this long after the first
#: of a batch, or as soon as this many wait (one transaction each way).
HEARTBEAT_BATCH_S = 0.02
HEARTBEAT_BATCH = 1000


def load_tokens(settings: GatewaySettings) -> TokenStore:
    store = TokenStore()
    if settings.tokens_file is not None:
        store.load_file(settings.tokens_file)
    for role, secret in (
        (Role.ADMIN, settings.admin_token),
        (Role.AGENT, settings.agent_token),
        (Role.VIEWER, settings.viewer_token),
    ):
        if secret is not None:
            store.add(role, secret.get_secret_value())
    if not len(store):
        raise ConfigError("no API tokens configured: pass --tokens-file or GATEWAY_ADMIN_TOKEN")
    return store


def load_keys(settings: GatewaySettings) -> dict[str, Any]:
    if settings.trusted_keys is None:
        raise ConfigError("no trusted signer keys: pass --trusted-keys FILE_OR_DIR")
    from models.signing import load_trusted_keys

    keys = load_trusted_keys(settings.trusted_keys)
    if not keys:
        raise ConfigError(f"no public keys found in {settings.trusted_keys}")
    return keys


class Gateway:
    """Everything one gateway process holds; HTTP handlers receive it."""

    def __init__(self, settings: GatewaySettings) -> None:
        self.settings = settings
        self.tokens = load_tokens(settings)
        self.trusted_keys = load_keys(settings)
        url = settings.resolved_database_url()
        if url.startswith("postgres") and settings.desired_signing_key is None:
            raise ConfigError(
                "with a PostgreSQL database every replica must sign desired state with the "
                "same key: pass --desired-signing-key (a Secret mounted in every replica)"
            )
        self.db = open_database(url)
        log.info("database %s (%s)", redact(url), self.db.dialect)
        self.leadership = Leadership(self.db)
        self.executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="gw-verify")
        self.registry = Registry(
            self.db,
            DirectoryBlobStore(settings.blob_dir, shared=self.db.dialect != "sqlite"),
            self.trusted_keys,
            max_bytes=settings.max_bundle_bytes,
            executor=self.executor,
        )
        self.registry.cleanup_incoming()
        self.fleet = Fleet(
            self.db,
            settings.heartbeat_timeout_s,
            require_enrolment=settings.require_enrolment,
            on_flush=self._count_heartbeats,
        )
        from models.signing import ensure_key

        self.desired_key = ensure_key(settings.signing_key_path())
        self.topics = settings.topics()
        self.bus: Bus | None = None
        self.engine_task: asyncio.Task[None] | None = None
        self.metrics = GatewayMetrics(self)
        self.port = settings.port
        self.cloud = (
            CloudTier.from_settings(settings, self.trusted_keys, self.executor)
            if settings.cloud
            else None
        )
        self.engine = RolloutEngine(
            self.db,
            self.registry,
            self.fleet,
            self.topics,
            self._publish,
            self.base_url,
            wave_timeout_s=settings.wave_timeout_s,
            signing_key=self.desired_key,
            cloud_load=self._cloud_load if self.cloud else None,
        )
        self.config: ConfigTwins = self.engine.config
        self._openapi: dict[str, Any] | None = None
        self._wake = asyncio.Event()
        self._flush_timer: asyncio.TimerHandle | None = None
        self._closed = False

    def base_url(self) -> str:
        return self.settings.base_url(self.port)

    @property
    def url(self) -> str:
        return f"http://{self.settings.host}:{self.port}"

    def bundle_url(self, name: str, version: int) -> str:
        return f"{self.base_url()}/api/v1/models/{name}/versions/{version}/bundle"

    def openapi(self) -> dict[str, Any]:
        if self._openapi is None:
            self._openapi = build_openapi()
        return self._openapi

    async def _cloud_load(self, name: str, version: int) -> str:
        assert self.cloud is not None
        row = self.registry.get(name, version)
        return await self.cloud.load(name, version, self.registry.blob_path(row["sha256"]))

    def kick(self) -> None:
        """Run the engine now rather than at the next tick (a rollout was just started)."""
        self._wake.set()

    def _publish(self, topic: str, payload: bytes) -> None:
        if self.bus is None:
            raise ConfigError("no MQTT bus: the gateway is not running")
        self.bus.publish(topic, payload)

    def _on_connected(self) -> None:
        # A broker restarted without persistence has lost the retained desired state;
        # re-assert it (agents ignore a desired state they already satisfy). The leader
        # does; a replica that becomes leader later does it then (run_engine).
        if not self._closed and self.leadership.leading:
            self._republish()

    def _republish(self) -> None:
        count = self.engine.republish_all()
        log.info("desired state re-published for %d agents", count)

    def _on_status(self, agent_id: str, payload: bytes) -> None:
        # paho may still hand over messages while we shut down; an empty payload clears
        # a retained message: not a heartbeat.
        if self._closed or not payload:
            return
        if not self.fleet.receive(agent_id, payload):
            self.metrics.mqtt_heartbeat(accepted=False)
            return
        # Written in batches: at most HEARTBEAT_BATCH_S later, or at once when many wait
        # (a rollout makes thousands of agents report within a second).
        if self.fleet.queued >= HEARTBEAT_BATCH:
            self._flush_heartbeats()
        elif self._flush_timer is None:
            loop = asyncio.get_running_loop()
            self._flush_timer = loop.call_later(HEARTBEAT_BATCH_S, self._flush_heartbeats)

    def _flush_heartbeats(self) -> None:
        if self._flush_timer is not None:
            self._flush_timer.cancel()
            self._flush_timer = None
        try:
            self.fleet.flush()
        except Exception:  # the database is down: agents report again next interval
            log.exception("writing heartbeats failed")

    def _count_heartbeats(self, ingested: int, dropped: int) -> None:
        self.metrics.mqtt_heartbeat(accepted=True, count=ingested)
        self.metrics.mqtt_heartbeat(accepted=False, count=dropped)

    async def run_engine(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            was_leading = self.leadership.leading
            try:
                if self.leadership.check():
                    if not was_leading:
                        # Taking over: nothing cached from an earlier term is trusted, and
                        # documents the old leader committed but never sent go out now.
                        self.engine.reset()
                        self._republish()
                    with self.metrics.engine_tick.time():
                        self.fleet.sweep()
                        await self.engine.tick()
                elif was_leading:
                    self.engine.reset()
            except Exception:  # keep the engine alive; the next tick retries
                log.exception("engine tick failed")
            # A tick over thousands of agents can take a good part of tick_s: waiting
            # twice as long as it took keeps the engine under a third of a core (and the
            # loop free for heartbeats and the API). Capped at 4 ticks: a one-off long
            # tick (issuing a 10,000-agent wave) must not delay noticing its failures.
            spent = loop.time() - started
            pause = max(self.settings.tick_s, min(2 * spent, 4 * self.settings.tick_s))
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancel that
            # races the event, and then shutdown waits on this task forever.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(pause):
                    await self._wake.wait()
            self._wake.clear()

    def close(self) -> None:
        self._closed = True
        with contextlib.suppress(Exception):
            self._flush_heartbeats()  # what arrived before the shutdown is kept
        self.leadership.release()
        self.executor.shutdown(wait=False, cancel_futures=True)
        self.db.close()


@contextlib.asynccontextmanager
async def serve(settings: GatewaySettings) -> AsyncIterator[Gateway]:
    """Run a gateway (HTTP + MQTT + rollout engine) for the duration of the block."""
    gw = Gateway(settings)
    gw.bus = Bus(
        settings.broker,
        gw.topics,
        gw._on_status,
        ca_file=settings.mqtt_ca_file,
        share_group=settings.mqtt_share_group,
    )
    gw.bus.on_connected = gw._on_connected
    gw.bus.start()
    runner = web.AppRunner(make_app(gw), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, settings.host, settings.port)
    await site.start()
    if runner.addresses:  # the bound port (settings.port 0 picks one)
        gw.port = int(runner.addresses[0][1])
    if not await gw.bus.wait_connected(5.0):
        gw.bus.unreachable("not connected within 5s")
    # Let retained heartbeats arrive before the engine judges anyone offline or stale.
    await asyncio.sleep(0.2)
    engine = gw.engine_task = asyncio.create_task(gw.run_engine(), name="rollout-engine")
    log.info("cloud gateway on %s (API %s/openapi.json)", gw.url, gw.url)
    try:
        yield gw
    finally:
        engine.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await engine
        await gw.engine.close()
        await runner.cleanup()
        gw.bus.stop()
        gw.close()
