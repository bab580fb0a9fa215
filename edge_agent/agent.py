"""``EdgeAgent``: builds every part of the edge agent from :class:`EdgeSettings` and runs it.

Startup order matters for "ready in <= 3 s": the model loads (and warms) in the inference
executor while the MQTT session connects; ``/readyz`` turns green when both are done.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from edge_agent.batch import BatchDone, Request
from edge_agent.core import AgentCore
from edge_agent.dispatch import Dispatcher
from edge_agent.journal import Journal
from edge_agent.mqtt_link import MqttLink
from edge_agent.registry import ModelSlot
from edge_agent.settings import EdgeSettings
from edge_agent.shutdown import stop_agent
from edge_agent.state import load_streams
from edge_agent.stats import Stats
from edge_agent.status import heartbeat_doc, status_doc
from edge_agent.store import Store
from edge_agent.telemetry import Telemetry
from edge_agent.wiring import (
    make_dispatcher,
    make_remote,
    make_topics,
    make_updater,
    open_journal,
    probe_cloud,
)
from models.backends.base import BackendOptions
from models.manifest import Manifest
from offload.mqtt import BrokerUrl

log = logging.getLogger(__name__)


class EdgeAgent:
    """One edge agent process (also usable in-process by tests and simulators)."""

    def __init__(self, settings: EdgeSettings, *, connect_wait_s: float = 3.0) -> None:
        self.settings = s = settings
        self._connect_wait = connect_wait_s
        self.started = time.monotonic()
        self.topics = make_topics(s.topic_prefix)
        self.stats = Stats()
        self.telemetry = Telemetry()
        self.executor = ThreadPoolExecutor(s.workers, thread_name_prefix="edge-infer")
        self.models = ModelSlot(
            s.repository,
            self.executor,
            kind=s.backend,
            options=BackendOptions(
                intra_op_threads=s.intra_op_threads,
                cache_dir=s.engine_cache_dir,
                fp16=s.fp16,
                emulate_ms_per_batch=s.emulate_ms_per_batch,
                emulate_ms_per_item=s.emulate_ms_per_item,
            ),
            warmup_batches=tuple(sorted({1, min(8, s.max_batch), s.max_batch})),
            on_change=self._model_changed,
        )
        self.link: MqttLink | None = None
        self.dispatcher: Dispatcher  # built in start(): it needs the running loop
        self.core = AgentCore(
            s.agent_id,
            s.site,
            self.topics,
            self,
            self.stats,
            slo_s=s.slo_ms / 1000.0 if s.slo_ms else None,
            max_payload_bytes=s.max_payload_bytes,
            anomaly_threshold=s.anomaly_threshold,
            hop=s.hop,
            deadline_from=s.deadline_from,
            max_clock_skew_s=s.max_clock_skew_s,
        )
        self.core.on_results = self._on_results
        self.core.on_alert = self._on_alert
        self.remote: Any = None
        self.policy: Any = None
        self.journal: Journal | None = None
        self.store: Store | None = None
        self.updater: Any = None
        self.update_state: dict[str, Any] = {
            "rollout_id": None,
            "model": "",
            "version": 0,
            "state": "idle",
            "reason": None,
        }
        self.http_port: int | None = None
        self.http_runner: Any = None
        self.tasks: list[asyncio.Task[None]] = []
        self._connected_event = asyncio.Event()

    # -- Publisher protocol for the core (before the link exists, drop) -------------------
    def publish(self, topic: str, payload: str | bytes, qos: int = 0, retain: bool = False) -> None:
        if self.link is not None:
            self.link.publish(topic, payload, qos, retain)

    def publish_many(self, messages: list[tuple[str, str]], qos: int = 0) -> None:
        if self.link is not None:
            self.link.publish_many(messages, qos)

    @property
    def broker_connected(self) -> bool:
        return self.link is not None and self.link.connected

    @property
    def ready(self) -> bool:
        return self.models.loaded is not None and self.broker_connected and self.core.ready

    def _model_changed(self, manifest: Manifest, event: str) -> None:
        self.core.use_manifest(manifest, event)
        self.stats.model_changed(manifest.ref)  # judge a new version on its own latencies
        loaded = self.models.loaded
        dispatcher = getattr(self, "dispatcher", None)  # built in start()
        if dispatcher is not None and loaded is not None:
            # Another version may be faster or slower: start from its measured warm-up
            # times, not from the previous version's history or a blind default.
            dispatcher.service.reset(loaded.warm_times)

    # -- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        s = self.settings
        loop = asyncio.get_running_loop()
        self.core.loop = loop
        name, version = s.model_ref()
        self._build_routing()
        self.link = MqttLink(
            BrokerUrl.parse(s.broker),
            s.agent_id,
            filters=s.filters(),
            qos=s.qos,
            share_group=s.share_group,
            clean_session=s.clean_session,
            ingest=self.core.ingest,
            ingest_acked=self.core.ingest_acked,
            control_topics=[self.topics.desired(s.agent_id), self.topics.desired(s.site)],
            on_control=self._on_control,
            on_connection=self._on_connection,
            end_of_burst=self.core.end_of_burst,
            mid_burst=self.core.mid_burst,
            loop=loop,
            will=(
                self.topics.status(s.agent_id),
                json.dumps({"agent_id": s.agent_id, "site": s.site, "online": False}),
            ),
            ca_file=s.mqtt_ca_file,
            cert_file=s.mqtt_cert_file,
            key_file=s.mqtt_key_file,
        )
        # Windows need the manifest before the first reading arrives.
        await self.models.load(name, version)
        state = s.stream_state_path()
        if state is not None:
            restored = load_streams(self.core, state)
            if restored:
                log.info("restored %d open stream windows from %s", restored, state)
        self.journal = open_journal(self)
        self.link.start()
        if s.db_path is not None:
            self.store = Store(
                s.db_path,
                retention_s=s.retention_hours * 3600,
                max_bytes=s.retention_mb * 2**20,
                uplink_topic=self.topics.uplink_topic(s.agent_id),
                publish=lambda t, p: self.link.client.publish(t, p, 1),  # type: ignore[union-attr]
                connected=lambda: self.broker_connected,
            )
            self.store.start()
        if self.remote is not None:
            await self.remote.start()
            self.tasks.append(asyncio.create_task(probe_cloud(self), name="cloud-rtt-probe"))
        self._wire_updater()
        from edge_agent.http import start_http

        self.http_runner, self.http_port = await start_http(self, s.http_host, s.http_port)
        self.tasks += [
            asyncio.create_task(self._heartbeat_loop(), name="heartbeat"),
            asyncio.create_task(self._telemetry_loop(), name="telemetry"),
        ]
        if self.journal is not None:
            self.tasks.append(asyncio.create_task(self._journal_loop(), name="journal-marks"))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._connected_event.wait(), self._connect_wait)

    def _build_routing(self) -> None:
        self.remote = make_remote(self.settings)
        self.dispatcher = make_dispatcher(self)
        self.policy = self.dispatcher.policy
        self.dispatcher.on_route = self._on_route
        self.dispatcher.on_fallback = self._on_fallback
        self.core.dispatcher = self.dispatcher
        self.core.inline = self.settings.inline_max_ms > 0
        self.core.flush_after_s = self.settings.max_wait_ms / 1000.0

    def _on_route(self, route: str, reason: str) -> None:
        with self.stats.lock:  # the loop and the MQTT thread (inline batches) both route
            self.stats.routes[route] += 1
            self.stats.reasons[reason] += 1

    def _on_fallback(self, reason: str) -> None:
        self.stats.fallbacks += 1
        self.stats.reasons[f"fallback:{reason}"] += 1

    def _wire_updater(self) -> None:
        self.updater = make_updater(self)
        self.update_state = dict(self.updater.state)

    def update_report(self, state: dict[str, Any]) -> None:
        self.update_state.update(state)
        self.send_heartbeat()

    def _on_control(self, topic: str, payload: bytes) -> None:
        if self.updater is None:
            return
        task = asyncio.ensure_future(self.updater.handle_desired(payload))
        task.add_done_callback(
            lambda t: (
                t.cancelled()
                or (t.exception() and log.error("desired-state handling failed: %s", t.exception()))
            )
        )

    def _on_connection(self, up: bool) -> None:
        if up:
            self._connected_event.set()
            self.core.wake()  # windows replayed from the journal can be answered now
            self.send_heartbeat()

    # -- results / alerts side outputs --------------------------------------------------
    def _on_results(self, produced: list[tuple[Request, str]], done: BatchDone) -> None:
        if self.journal is not None:
            self.journal.answered(produced)
        if self.store is not None:
            self.store.add_batch(produced, done.route, uplink=self.settings.uplink == "results")

    def _on_alert(self, alert: dict[str, Any]) -> None:
        if self.store is not None and self.settings.uplink != "off":
            self.store.enqueue_uplink("alert", json.dumps(alert))

    # -- status ---------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        return status_doc(self)

    def heartbeat(self) -> dict[str, Any]:
        return heartbeat_doc(self)

    def send_heartbeat(self) -> None:
        if self.link is not None and self.link.connected:
            self.link.publish(
                self.topics.status(self.settings.agent_id), json.dumps(self.heartbeat()), 1, True
            )

    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.heartbeat_s)
            self.send_heartbeat()

    async def _telemetry_loop(self) -> None:
        while True:
            self.telemetry.sample()
            self.stats.m_cpu.set(self.telemetry.cpu_percent)
            self.stats.m_rss.set(self.telemetry.rss_mb * 2**20)
            self.stats.m_readings.set(self.stats.readings)
            self.stats.m_queue.set(self.dispatcher.depth)
            await asyncio.sleep(1.0)

    async def _journal_loop(self) -> None:
        journal = self.journal
        while journal is not None:
            await asyncio.sleep(journal.lag_s)
            journal.idle()

    async def stop(self) -> None:
        """Drain and close everything (safe after a failed or partial start)."""
        try:
            await stop_agent(self)
        finally:
            if self.journal is not None:
                self.journal.close()  # after the drain: what was answered is final
