"""One served model on an agent: its windows, batcher, SLO, routing, journal and executor.

An agent runs one :class:`Pipeline` per model it serves. Pipelines share the MQTT
session, the offload client (one channel to the cloud tier; each pipeline asks for its
own cloud model), the telemetry and the SQLite store; everything that decides or computes
is their own, so a swap, a slow model or a failing backend in one never stalls another:
each has its own inference executor (the load and warm-up of a new version run there
too) and its own routing state.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from bus.topics import Topics
from edge_agent.app.settings import EdgeSettings
from edge_agent.durability.journal import Journal
from edge_agent.durability.store import OnCommit
from edge_agent.durability.stream_state import load_streams, save_streams
from edge_agent.ingest.core import AgentCore
from edge_agent.model.slot import ModelSlot
from edge_agent.ops.stats import AgentMetrics, Stats
from edge_agent.output.completion import Publisher, complete_batch
from edge_agent.routing.batch import BatchDone, Request
from edge_agent.routing.dispatcher import Dispatcher
from edge_agent.routing.policy import OffloadBudget, ServiceTimeModel, make_policy
from edge_agent.routing.rtt import RemoteRtt
from models.backends.base import BackendOptions
from models.manifest import Manifest
from offload.tracing import Tracer

log = logging.getLogger(__name__)


def policy_params(s: EdgeSettings) -> dict[str, Any]:
    """Settings that parameterise the chosen policy (``make_policy`` keyword arguments)."""
    if s.policy == "cascade":
        return {"min_confidence": s.cascade_min_confidence, "pressure_limit": s.pressure_limit}
    if s.policy == "slo-aware":
        return {"pressure_limit": s.pressure_limit}
    return {}


def _per_model(path: Path | None, name: str) -> Path | None:
    """``agent.streams.npz`` -> ``agent.streams.<name>.npz``: one file per served model."""
    return None if path is None else path.with_suffix(f".{name}{path.suffix}")


class Pipeline:
    """Everything one served model needs between the demultiplexer and the publisher."""

    def __init__(
        self,
        settings: EdgeSettings,
        name: str,
        *,
        topics: Topics,
        metrics: AgentMetrics,
        publisher: Publisher,
        remote: Any,
        pressure: Callable[[], float],
        on_results: Callable[[list[tuple[Request, str]], BatchDone, OnCommit | None], bool],
        on_alert: Callable[[dict[str, Any]], None],
        connected: Callable[[], bool],
        topics_of: Callable[[str], str | None] = lambda name: None,
        tracer: Tracer | None = None,
    ) -> None:
        s = self.settings = settings
        self._topics_of = topics_of
        self.name = name
        self.remote = remote
        self._pressure = pressure
        self._connected = connected
        self._on_results = on_results
        self.executor = ThreadPoolExecutor(s.workers, thread_name_prefix=f"infer-{name}"[:15])
        self.stats = Stats(metrics=metrics, model=name)
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
        self.core = AgentCore(
            s.agent_id,
            s.site,
            topics,
            publisher,
            self.stats,
            slo_s=s.slo_ms / 1000.0 if s.slo_ms else None,
            max_payload_bytes=s.max_payload_bytes,
            max_streams=s.max_streams,
            stream_idle_s=s.stream_idle_s,
            anomaly_threshold=s.anomaly_threshold,
            hop=s.hop,
            deadline_from=s.deadline_from,
            max_clock_skew_s=s.max_clock_skew_s,
            reorder_s=s.reorder_ms / 1000.0,
        )
        self.tracer = tracer
        self.core.tracer = tracer
        self.core.on_results = self._results
        self.core.on_alert = on_alert
        self.dispatcher: Dispatcher | None = None  # needs the running loop: start()
        self.journal: Journal | None = None
        self._probe: asyncio.Task[None] | None = None

    # -- lifecycle ------------------------------------------------------------------------
    def build(self, loop: asyncio.AbstractEventLoop) -> None:
        """Routing parts that need the loop (before the model loads: it resets estimates)."""
        s = self.settings
        self.core.loop = loop
        budget = (
            OffloadBudget(s.offload_max_rps, None, time.monotonic) if s.offload_max_rps else None
        )
        cloud_model = s.cloud_model_for(self.name)

        def remote_model() -> tuple[str, int | None]:
            # Same name and version on the cloud tier unless a bigger cloud model is named.
            manifest, _ = self.models.active
            return (cloud_model, None) if cloud_model else (manifest.name, manifest.version)

        d = Dispatcher(
            self.models,
            self.executor,
            # Finished batches go straight to the publisher (never back through the core).
            functools.partial(complete_batch, self.core),
            max_batch=s.max_batch,
            max_wait_s=s.max_wait_ms / 1000.0,
            workers=s.workers,
            policy=make_policy(s.policy, **policy_params(s)),
            service=ServiceTimeModel(),
            remote=self.remote,
            remote_model=remote_model,
            budget=budget,
            remote_concurrency=s.remote_concurrency,
            inline_max_s=s.inline_max_ms / 1000.0,
            pressure=self._pressure,
            remote_rtt=RemoteRtt(s.cloud_rtt_prior_ms / 1000.0, s.cloud_rtt_min_samples),
            on_escalation=self.stats.record_escalation,
        )
        d.tracer = self.tracer
        d.on_route = self.stats.record_route
        d.on_fallback = self.stats.record_fallback
        self.dispatcher = d
        self.core.dispatcher = d
        self.core.inline = s.inline_max_ms > 0
        self.core.flush_after_s = s.max_wait_ms / 1000.0

    def reconfigure(self, s: EdgeSettings) -> None:
        """Adopt live settings (:mod:`edge_agent.app.config_twin`, on the loop): the SLO of new
        windows, the policy of the next batches, batching waits, the anomaly threshold.
        Nothing in flight is dropped or re-timed."""
        self.settings = s
        loaded = self.models.loaded
        manifest_slo = loaded.manifest.slo_ms / 1000.0 if loaded is not None else None
        self.core.use_slo(s.slo_ms / 1000.0 if s.slo_ms else None, manifest_slo)
        self.core.threshold = s.anomaly_threshold
        d = self.dispatcher
        if d is None:
            return  # build() reads the new settings
        d.use_policy(make_policy(s.policy, **policy_params(s)))
        d.max_wait = s.max_wait_ms / 1000.0
        d.inline_max_s = s.inline_max_ms / 1000.0
        self.core.inline = s.inline_max_ms > 0
        self.core.flush_after_s = s.max_wait_ms / 1000.0
        d.kick()  # a shorter wait may make queued batches due now

    async def load(self, version: int | None) -> Manifest:
        """Load the model, restore saved windows and replay the crash journal."""
        manifest = await self.models.load(self.name, version)
        state = self.state_path
        if state is not None:
            restored = load_streams(self.core, state)
            if restored:
                log.info("%s: restored %d open stream windows from %s", self.name, restored, state)
        self.journal = self._open_journal()
        if self.remote is not None:
            self._probe = asyncio.create_task(self._probe_cloud(), name=f"rtt-probe-{self.name}")
        return manifest

    @property
    def state_path(self) -> Path | None:
        return _per_model(self.settings.stream_state_path(), self.name)

    def _open_journal(self) -> Journal | None:
        """Open the crash journal (None when disabled) and replay what a crashed run
        acknowledged, before the broker sends anything new."""
        s = self.settings
        root = s.journal_path()
        if root is None:
            return None
        where = root / self.name
        journal = Journal(
            where,
            segment_bytes=int(s.journal_segment_mb * 2**20),
            compact_s=s.journal_compact_s,
            fsync=s.journal_fsync,
            connected=self._connected,
        )
        report = journal.open(self.core)
        self.core.journal = journal
        if report["unclean"]:
            log.warning("unclean stop before; journal %s replayed: %s", where, report)
        return journal

    async def _probe_cloud(self) -> None:
        """Measure the cloud's round trip with single zero windows until the prior is unneeded."""
        d, remote = self.dispatcher, self.remote
        if d is None or remote is None:
            return
        runner = d.remote

        async def call(deadline: float) -> object:
            manifest, _ = self.models.active
            pre = manifest.preprocessing
            window = np.zeros((1, pre.window, len(pre.channels)), dtype=np.float32)
            return await runner.call(manifest, window, deadline, count=False)

        await runner.rtt.probe(
            call, lambda: bool(remote.available), refresh_s=self.settings.cloud_rtt_refresh_s
        )

    def journal_tick(self) -> None:
        if self.journal is not None:
            self.journal.idle()

    async def drain(self, within_s: float = 5.0) -> None:
        """Answer everything accepted, then save open windows for the next start."""
        if self._probe is not None:
            self._probe.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._probe
            self._probe = None
        if self.dispatcher is not None:
            await self.dispatcher.drain(within_s=within_s)
        state = self.state_path
        if state is not None and self.models.loaded is not None:
            save_streams(self.core, state)

    def close(self) -> None:
        """After :meth:`drain`: the journal's last snapshot, then the model and threads."""
        if self.journal is not None:
            self.journal.close()  # after the drain: what was answered is final
            self.journal = None
        self.models.close()
        self.executor.shutdown(wait=False)

    # -- callbacks ------------------------------------------------------------------------
    def _model_changed(self, manifest: Manifest, event: str) -> None:
        self.core.use_manifest(manifest, event)
        self.stats.model_changed(manifest.ref)  # judge a new version on its own latencies
        loaded = self.models.loaded
        if self.dispatcher is not None and loaded is not None:
            # Another version may be faster or slower: start from its measured warm-up
            # times, not from the previous version's history or a blind default.
            self.dispatcher.service.reset(loaded.warm_times)

    def _results(self, produced: list[tuple[Request, str]], done: BatchDone) -> None:
        """Results were handed to the MQTT client. The journal may mark their windows
        answered only when every durable sink has them: with a store, ``on_results``
        returns True and the store calls ``journal.committed`` after its commit (on its
        own thread: this one, the event loop, never waits on the disk)."""
        journal = self.journal
        durable = self._on_results(produced, done, None if journal is None else journal.committed)
        if journal is not None and not durable:
            journal.answered(produced)

    # -- status ---------------------------------------------------------------------------
    @property
    def ready(self) -> bool:
        return self.models.loaded is not None and self.core.ready

    @property
    def core_topics(self) -> str | None:
        """The topic filter this model is bound to (None: the default model)."""
        return self._topics_of(self.name)

    @property
    def version(self) -> int | None:
        loaded = self.models.loaded
        return None if loaded is None else loaded.manifest.version
