"""``EdgeAgent``: builds every part of the edge agent from :class:`EdgeSettings` and runs it.

An agent serves any number of models (:mod:`edge_agent.app.pipeline`, one pipeline each),
each bound to the sensor topics it answers (:mod:`edge_agent.ingest.bindings`); readings reach
the right one through :mod:`edge_agent.ingest.demux`. It may start with none: it connects, is
ready, reports ``models: {}`` and serves what the gateway's desired state assigns (the
updater calls :meth:`EdgeAgent.swap` and :meth:`EdgeAgent.remove`). Models the gateway
assigned are remembered in ``<repository>/served.json`` so a restart serves them at once;
``--model`` flags win over that file.

Startup order matters for "ready in <= 3 s": the models load (and warm) in their
executors before the session starts reading; ``/readyz`` turns green when every model is
loaded and the broker is connected.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import time
from collections import Counter
from pathlib import Path
from typing import Any

from bus.broker import BrokerUrl
from bus.deadletters import dead_letter_json
from edge_agent.app.config_twin import ConfigTwin
from edge_agent.app.pipeline import Pipeline
from edge_agent.app.settings import EdgeSettings
from edge_agent.app.shutdown import close_link
from edge_agent.app.wiring import make_remote, make_topics, make_updater
from edge_agent.durability.store import OnCommit, Store
from edge_agent.ingest.bindings import Binding, Bindings
from edge_agent.ingest.core import AgentCore
from edge_agent.ingest.demux import Demux
from edge_agent.model.slot import ModelSlot
from edge_agent.ops.history import History
from edge_agent.ops.stats import AgentMetrics, Stats
from edge_agent.ops.status import heartbeat_doc, status_doc
from edge_agent.ops.telemetry import Telemetry
from edge_agent.routing.batch import BatchDone, Request
from edge_agent.routing.dispatcher import Dispatcher
from edge_agent.transport.link import MqttLink
from models.errors import ConfigError, EdgecloudError, NotFound
from models.manifest import Manifest
from offload.tracing import Tracer

log = logging.getLogger(__name__)

SERVED_FILE = "served.json"


class EdgeAgent:
    """One edge agent process (also usable in-process by tests and simulators)."""

    def __init__(self, settings: EdgeSettings, *, connect_wait_s: float = 3.0) -> None:
        self.settings = s = settings
        self._connect_wait = connect_wait_s
        self.started = time.monotonic()
        self.topics = make_topics(s.topic_prefix)
        self.metrics = AgentMetrics()
        self.telemetry = Telemetry()
        self.history = History()  # the dashboard's last 10 minutes (edge_agent/ops/history.py)
        self.bindings = Bindings()
        self.demux = Demux(self.bindings, self.dead_letter)
        self.deadletters: Counter[str] = Counter()  # rejected before reaching a model
        self.pipelines: dict[str, Pipeline] = {}
        self.tracer = (
            Tracer(
                s.otlp_endpoint,
                "edge-agent",
                sample_ratio=s.trace_sample_ratio,
                attributes={"edgecloud.agent_id": s.agent_id, "edgecloud.site": s.site},
            )
            if s.otlp_endpoint
            else None
        )
        self._pinned: dict[str, int | None] = {}  # model -> version asked for at start
        self._deadletter_topic = self.topics.dead_letter(s.agent_id)
        self.link: MqttLink | None = None
        self.remote: Any = make_remote(s)
        self.store: Store | None = None
        self.updater: Any = None
        #: Live settings from the desired state's config section (flags until one arrives).
        self.twin = ConfigTwin(s, self._reconfigure)
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
        self._served_lock = asyncio.Lock()
        for binding in self._initial_bindings():
            self._add_pipeline(binding.name, binding.topics)
            self._pinned[binding.name] = binding.version

    # -- which models -----------------------------------------------------------------------
    @property
    def served_file(self) -> Path:
        return Path(self.settings.repository) / SERVED_FILE

    def _initial_bindings(self) -> list[Binding]:
        """``--model`` flags, then the models the gateway assigned before a restart."""
        flags = self.settings.bindings()
        names = {b.name for b in flags}
        remembered: list[Binding] = []
        try:
            doc = json.loads(self.served_file.read_text())
            for entry in doc.get("models", []):
                b = Binding(str(entry["name"]), None, entry.get("topics"))
                Binding.parse(str(b))  # the file is ours, but validate what we read back
                if b.name not in names:
                    remembered.append(b)
        except FileNotFoundError:
            pass
        except (OSError, ValueError, KeyError, TypeError, EdgecloudError) as exc:
            log.warning("ignoring unreadable %s: %s", self.served_file, exc)
        return flags + remembered

    def _save_served(self) -> None:
        """Remember every served model's binding for the next start (atomic replace)."""
        doc = {
            "models": [
                {"name": name, "topics": self.bindings.topics_of(name)} for name in self.pipelines
            ]
        }
        path = self.served_file
        tmp = path.with_name(path.name + ".tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps(doc))
            os.replace(tmp, path)
        except OSError as exc:
            log.warning("cannot save %s: %s", path, exc)

    def _add_pipeline(self, name: str, topics: str | None) -> Pipeline:
        self.bindings.bind(name, topics)
        p = Pipeline(
            self.settings,
            name,
            topics=self.topics,
            metrics=self.metrics,
            publisher=self,
            remote=self.remote,
            pressure=lambda: self.telemetry.node_pressure,
            on_results=self._on_results,
            on_alert=self._on_alert,
            connected=lambda: self.broker_connected,
            topics_of=self.bindings.topics_of,
            tracer=self.tracer,
        )
        self.pipelines[name] = p
        return p

    @property
    def primary(self) -> Pipeline:
        """The first model's pipeline (what a single-model agent serves)."""
        for p in self.pipelines.values():
            return p
        raise NotFound("this agent serves no model")

    # Single-model views, for the common case and for tests written for it.
    @property
    def core(self) -> AgentCore:
        return self.primary.core

    @property
    def models(self) -> ModelSlot:
        return self.primary.models

    @property
    def dispatcher(self) -> Dispatcher:
        d = self.primary.dispatcher
        if d is None:
            raise NotFound("the agent has not started")
        return d

    @property
    def stats(self) -> Stats:
        return self.primary.stats

    # -- Publisher protocol for the cores (before the link exists, drop) ---------------------
    def publish(self, topic: str, payload: str | bytes, qos: int = 0, retain: bool = False) -> None:
        if self.link is not None:
            self.link.publish(topic, payload, qos, retain)

    def publish_many(self, messages: list[tuple[str, str]], qos: int = 0) -> None:
        if self.link is not None:
            self.link.publish_many(messages, qos)

    def dead_letter(self, topic: str, payload: bytes, reason: str, detail: str) -> None:
        """A reading no model took (MQTT thread)."""
        self.deadletters[reason] += 1
        self.metrics.deadletter.labels(reason).inc()
        msg = dead_letter_json(self.settings.agent_id, topic, payload, reason, detail)
        try:
            self.publish(self._deadletter_topic, msg, 0, False)
        except Exception:  # the broker being gone must not turn bad input into a crash
            log.debug("dead-letter publish failed", exc_info=True)

    @property
    def broker_connected(self) -> bool:
        return self.link is not None and self.link.connected

    @property
    def ready(self) -> bool:
        return self.broker_connected and all(p.ready for p in self.pipelines.values())

    # -- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        s = self.settings
        loop = asyncio.get_running_loop()
        self._build_routing()
        self.link = MqttLink(
            broker_url(s),
            s.agent_id,
            filters=self.bindings.subscriptions(s.filters()),
            qos=s.qos,
            share_group=s.share_group,
            clean_session=s.clean_session,
            ingest=self.demux.ingest,
            ingest_acked=self.demux.ingest_acked,
            control_topics=[self.topics.desired(s.agent_id), self.topics.desired(s.site)],
            on_control=self._on_control,
            on_connection=self._on_connection,
            end_of_burst=self.demux.end_of_burst,
            mid_burst=self.demux.mid_burst,
            tick=self.demux.tick,
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
        flags = {b.name for b in s.bindings()}
        for name, p in list(self.pipelines.items()):
            try:
                await p.load(self._pinned.get(name))
            except EdgecloudError as exc:
                if name in flags:
                    raise  # a model the operator asked for must load, or the agent fails
                log.error("cannot serve %s remembered from %s: %s", name, SERVED_FILE, exc)
                await self._drop(name)
                continue
            self.demux.attach(name, p.core)
        self._export_served()
        if s.db_path is not None:
            # Before the session starts: windows replayed from the journal are answered
            # as soon as it is up, and their results must reach the store.
            link = self.link
            self.store = Store(
                s.db_path,
                retention_s=s.retention_hours * 3600,
                max_bytes=s.retention_mb * 2**20,
                uplink_topic=self.topics.uplink_topic(s.agent_id),
                publish=lambda t, p: link.client.publish(t, p, 1),
                connected=lambda: self.broker_connected,
                metrics=self.metrics,
            )
            self.store.start()
        self.link.start()
        if self.remote is not None:
            await self.remote.start()
        self._wire_updater()
        from edge_agent.ops.http import start_http

        self.http_runner, self.http_port = await start_http(self, s.http_host, s.http_port)
        self.tasks += [
            asyncio.create_task(self._heartbeat_loop(), name="heartbeat"),
            asyncio.create_task(self._telemetry_loop(), name="telemetry"),
            asyncio.create_task(self.history.run(self.status), name="dashboard-history"),
        ]
        if s.journal_path() is not None:
            self.tasks.append(asyncio.create_task(self._journal_loop(), name="journal-marks"))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._connected_event.wait(), self._connect_wait)

    def _build_routing(self) -> None:
        loop = asyncio.get_running_loop()
        for p in self.pipelines.values():
            if p.dispatcher is None:
                p.build(loop)

    def _wire_updater(self) -> None:
        self.updater = make_updater(self.settings, self, self.update_report)
        self.update_state = dict(self.updater.state)
        self.updater.on_config = self._on_config

    def _on_config(self, desired: Any) -> None:
        if self.twin.on_desired(desired):
            self.send_heartbeat()  # the gateway sees the new config (or the refusal) now

    def _reconfigure(self, settings: EdgeSettings) -> None:
        """Live settings changed (config twin): every pipeline and the heartbeat period."""
        self.settings = settings
        for p in self.pipelines.values():
            p.reconfigure(settings)

    def update_report(self, state: dict[str, Any]) -> None:
        self.update_state.update(state)
        self.send_heartbeat()

    def _on_control(self, topic: str, payload: bytes) -> None:
        if self.updater is None:
            return
        task = asyncio.ensure_future(self.updater.handle_desired(payload))
        task.add_done_callback(_log_failure)

    def _on_connection(self, up: bool) -> None:
        if up:
            self._connected_event.set()
            for p in self.pipelines.values():
                p.core.wake()  # windows replayed from the journal can be answered now
            self.send_heartbeat()

    # -- models the gateway assigns (the updater's ModelTarget) -----------------------------
    def topics_of(self, name: str) -> str | None:
        return self.bindings.topics_of(name)

    def serving(self, name: str) -> int | None:
        """The active version of ``name`` here, or None."""
        p = self.pipelines.get(name)
        return None if p is None else p.version

    async def swap(self, name: str, version: int, topics: str | None = None) -> Manifest:
        """Serve ``name:version`` (adding the model, bound to ``topics``, if it is new).

        An existing model swaps load-before-unload; ``topics`` (when given) moves its
        binding. The other models keep serving throughout.
        """
        async with self._served_lock:
            p = self.pipelines.get(name)
            if p is None:
                p = self._add_pipeline(name, topics)
                try:
                    p.build(asyncio.get_running_loop())
                    manifest = await p.load(version)
                except BaseException:
                    await self._drop(name)
                    raise
                self.demux.attach(name, p.core)
                log.info("now serving %s on %s", manifest.ref, topics or "the default topics")
            else:
                loaded = p.models.loaded
                if loaded is not None and loaded.manifest.version == version:
                    manifest = loaded.manifest  # the same version: only the binding moves
                else:
                    manifest = await p.models.swap(name, version)
                if topics is not None and topics != self.bindings.topics_of(name):
                    self.bindings.bind(name, topics)
                    self.demux.rebound()
            self._changed_served()
            return manifest

    async def remove(self, name: str) -> None:
        """Stop serving ``name``: its readings become ``no-model`` dead letters."""
        async with self._served_lock:
            if name not in self.pipelines:
                return
            await self._drop(name)
            self._changed_served()
            log.info("stopped serving %s", name)

    async def _drop(self, name: str) -> None:
        p = self.pipelines.pop(name)
        self.bindings.unbind(name)
        self.demux.detach(name)
        await p.drain()
        p.close()

    def _changed_served(self) -> None:
        self._save_served()
        self._export_served()
        if self.link is not None:
            self.link.set_filters(self.bindings.subscriptions(self.settings.filters()))
        self.send_heartbeat()

    def _export_served(self) -> None:
        self.metrics.served({n: v for n, p in self.pipelines.items() if (v := p.version)})

    # -- results / alerts side outputs --------------------------------------------------
    def _on_results(
        self, produced: list[tuple[Request, str]], done: BatchDone, on_commit: OnCommit | None
    ) -> bool:
        """Hand results to the durable sinks; True when one will call ``on_commit``."""
        if self.store is None:
            return False
        uplink = self.settings.uplink == "results"
        self.store.add_batch(produced, done.route, uplink=uplink, on_commit=on_commit)
        return True

    def _on_alert(self, alert: dict[str, Any]) -> None:
        if self.store is not None and self.settings.uplink != "off":
            self.store.enqueue_uplink("alert", json.dumps(alert))

    # -- status ---------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        return status_doc(self)

    def heartbeat(self) -> dict[str, Any]:
        from edge_agent.ops.http import dashboard_url

        return heartbeat_doc(
            self, config=self.twin.report(), dashboard_url=dashboard_url(self)
        ).as_dict()

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
            m = self.metrics
            m.cpu.set(self.telemetry.cpu_percent)
            m.rss.set(self.telemetry.rss_mb * 2**20)
            m.breaker_state(_breaker(self.remote))
            for p in self.pipelines.values():
                p.stats.export_readings()
                if p.dispatcher is not None:
                    p.stats.m_queue.set(p.dispatcher.depth)
            await asyncio.sleep(1.0)

    async def _journal_loop(self) -> None:
        lag = 0.05
        while True:
            await asyncio.sleep(lag)
            for p in list(self.pipelines.values()):
                p.journal_tick()

    async def stop(self) -> None:
        """Drain and close everything (safe after a failed or partial start)."""
        for t in self.tasks:
            t.cancel()
        for t in self.tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        link = self.link
        if link is not None and not link.started:
            link.stop()  # start() failed before the session began: nothing to drain
        elif link is not None:
            s = self.settings
            offline = {"agent_id": s.agent_id, "site": s.site, "online": False, "ts": time.time()}
            await close_link(
                link,
                list(self.pipelines.values()),
                self.topics.status(s.agent_id),
                json.dumps(offline),
            )
        for p in self.pipelines.values():
            if link is None or not link.started:
                await p.drain(within_s=0.5)
        if self.store is not None:
            # Commit what the drain answered, so the journals' last snapshots (p.close)
            # see it answered and a graceful restart repeats nothing.
            await asyncio.to_thread(self.store.flush, 5.0)
        for p in self.pipelines.values():
            p.close()
        if self.updater is not None:
            with contextlib.suppress(Exception):
                await self.updater.close()
        if self.http_runner is not None:
            await self.http_runner.cleanup()
        if self.remote is not None:
            with contextlib.suppress(Exception):
                await self.remote.close()
        if self.store is not None:
            self.store.stop()
        if self.tracer is not None:
            self.tracer.close()  # exports what is left
        self.telemetry.close()


def _log_failure(task: asyncio.Future[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("desired-state handling failed: %s", task.exception())


def _breaker(remote: Any) -> str:
    if remote is None:
        return "none"
    try:
        return str(remote.stats.breaker_state)
    except Exception:  # a client without stats yet
        return "closed"


def broker_url(s: EdgeSettings) -> BrokerUrl:
    """``--broker``, with the password from ``--mqtt-password-file`` when the URL has none
    (a URL's own credentials win: the shared fallback user of a site)."""
    url = BrokerUrl.parse(s.broker)
    if s.mqtt_password_file is None or url.password is not None:
        return url
    try:
        password = Path(s.mqtt_password_file).read_text().strip()
    except OSError as exc:
        raise ConfigError(f"cannot read --mqtt-password-file: {exc}") from exc
    return dataclasses.replace(url, username=url.username or s.agent_id, password=password)
