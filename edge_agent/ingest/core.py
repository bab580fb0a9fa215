"""``AgentCore``: the transport-agnostic heart of the edge agent.

The MQTT layer calls :meth:`AgentCore.ingest` from its network thread for every message;
that hot path validates, windows and hands complete windows to the event loop in bulk
(a deque drained by one coalesced wakeup, not one ``call_soon_threadsafe`` per message).
Each window's deadline runs from the sensor ``ts`` of its last reading
(:mod:`edge_agent.ingest.deadlines`). The loop batches and routes them
(:mod:`edge_agent.routing.dispatcher`) and :meth:`complete` publishes one result per request
(:mod:`edge_agent.output.completion`). HTTP and heartbeat only read :meth:`status`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

from bus.deadletters import dead_letter_json
from bus.readings import PayloadError, decode
from bus.topics import StreamId, Topics
from edge_agent.ingest.deadlines import DeadlineFrom, LatencyClock
from edge_agent.ingest.reorder import HeldReading
from edge_agent.ingest.windows import StreamWindow
from edge_agent.ops.stats import Stats
from edge_agent.output.completion import Publisher
from edge_agent.output.results import stream_prefix
from edge_agent.routing.batch import BatchDone, Request
from edge_agent.routing.dispatcher import Dispatcher
from models.errors import InvalidInput
from models.manifest import Manifest
from offload.tracing import Tracer

if TYPE_CHECKING:
    from edge_agent.durability.journal import Journal

log = logging.getLogger(__name__)


class AgentCore:
    """Ingest -> windows -> dispatcher -> results, plus counters and status."""

    def __init__(
        self,
        agent_id: str,
        site: str,
        topics: Topics,
        publisher: Publisher,
        stats: Stats,
        *,
        slo_s: float | None,
        max_payload_bytes: int,
        max_streams: int = 10000,
        stream_idle_s: float = 300.0,
        result_qos: int = 0,
        anomaly_threshold: float | None = None,
        hop: int | None = None,
        deadline_from: DeadlineFrom = "sensor",
        max_clock_skew_s: float = 300.0,
        reorder_s: float = 0.5,
        reorder_rows: int = 4096,
    ) -> None:
        self.agent_id = agent_id
        self.site = site
        self.topics = topics
        self.publisher = publisher
        self.stats = stats
        self.slo_override = slo_s
        self.clock = LatencyClock(
            slo_s or 0.1, source=deadline_from, max_clock_skew_s=max_clock_skew_s
        )
        self.max_bytes = max_payload_bytes
        self.max_streams = max_streams
        self.stream_idle_s = stream_idle_s
        self.result_qos = result_qos
        self.threshold = anomaly_threshold
        self.hop_override = hop
        self.reorder_s = reorder_s  # 0: an acknowledged reading past a gap opens it at once
        self.reorder_rows = reorder_rows
        self._holding: set[StreamWindow] = set()  # streams with held readings
        self.inline = False  # set by the agent when the dispatcher may run batches inline
        self.flush_after_s = 0.001  # mid-burst: run inline batches whose oldest waited this
        self.dispatcher: Dispatcher | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.alerts: deque[dict[str, Any]] = deque(maxlen=50)
        self.on_results: Callable[[list[tuple[Request, str]], BatchDone], None] | None = None
        self.on_alert: Callable[[dict[str, Any]], None] | None = None
        self._streams: dict[str, StreamWindow] = {}
        self._pending: deque[Request] = deque()
        self._wake = False
        self._gen = 0
        self._names: tuple[str, ...] = ()
        self._window = 0
        self._hop = 1
        self._deadletter_topic = topics.dead_letter(agent_id)
        self.tracer: Tracer | None = None  # set by the agent with --otlp-endpoint
        self.journal: Journal | None = None  # set by the agent: QoS>=1 readings survive kill -9
        # While the journal replays, emitted windows are collected here instead of queued.
        self._capture: list[tuple[StreamWindow, np.ndarray, int, float | None]] | None = None

    @property
    def slo_s(self) -> float:
        return self.clock.slo_s

    # -- model changes -------------------------------------------------------------------
    def use_manifest(self, manifest: Manifest, event: str = "loaded") -> None:
        """Adopt the windowing of a newly active model (streams re-initialise lazily)."""
        pre = manifest.preprocessing
        layout = (tuple(pre.channels), pre.window, self.hop_override or pre.hop)
        self.clock.slo_s = self.slo_override or manifest.slo_ms / 1000.0
        if layout != (self._names, self._window, self._hop):
            # Open windows only survive a swap when the new model reads the same layout.
            self._names, self._window, self._hop = layout
            self._gen += 1

    def use_slo(self, slo_s: float | None, manifest_slo_s: float | None) -> None:
        """A new SLO (config twin; None: the manifest's). Windows produced from now on get
        it; requests already queued keep the deadline they were given."""
        self.slo_override = slo_s
        fallback = manifest_slo_s if manifest_slo_s is not None else self.clock.slo_s
        self.clock.slo_s = slo_s or fallback

    @property
    def generation(self) -> int:
        """Bumped whenever the window layout changes (streams then start over)."""
        return self._gen

    def signature(self) -> list[object]:
        """What saved stream state must match to be reusable."""
        return [list(self._names), self._window, self._hop]

    @property
    def streams(self) -> dict[str, StreamWindow]:
        return self._streams

    def stream_for(self, topic: str) -> StreamWindow | None:
        """The stream of ``topic`` (created if new; None for an invalid topic)."""
        st = self._streams.get(topic)
        if st is None or st.generation != self._gen:
            st = self._stream(topic)
        return st

    @property
    def ready(self) -> bool:
        return self._window > 0 and self.dispatcher is not None

    # -- MQTT thread ---------------------------------------------------------------------
    def _stream(self, topic: str) -> StreamWindow | None:
        """A new stream for ``topic`` (None: bad topic, or the table is full of live streams).

        Called only for a reading that already passed validation: junk on distinct topics
        must not fill the table and lock real sensors out.
        """
        try:
            parts = topic.split("/")
            if len(parts) < 4:
                raise InvalidInput("topic needs .../{site}/{device}/{stream}")
            sid = StreamId(parts[-3], parts[-2], parts[-1])
        except InvalidInput as exc:
            self.dead_letter(topic, b"", "bad-topic", str(exc))
            return None
        if len(self._streams) >= self.max_streams and not self._evict_idle():
            self.dead_letter(
                topic,
                b"",
                "too-many-streams",
                f"limit {self.max_streams} streams, none idle for {self.stream_idle_s:g} s",
            )
            return None
        st = StreamWindow(sid, self._window, self._hop, len(self._names), self._gen)
        st.topic = topic
        st.prefix = stream_prefix(sid.site, sid.device, sid.stream, self.agent_id)
        st.result_topic = self.topics.result(sid)
        st.alert_topic = self.topics.alert(sid)
        st.last_seen = time.monotonic()  # restored and replayed streams start fresh too
        self._streams[topic] = st
        return st

    def _evict_idle(self) -> bool:
        """Drop streams idle for ``stream_idle_s`` (none with unanswered journaled windows or
        held readings).

        Runs only when the table is full, so the hot path pays one float store per reading
        (``last_seen``) and no LRU bookkeeping; one pass frees every idle stream at once.
        """
        cutoff = time.monotonic() - self.stream_idle_s
        idle = [
            t
            for t, st in self._streams.items()
            if st.last_seen < cutoff and not st.pending and not st.holding()
        ]
        for t in idle:
            del self._streams[t]
        if idle:
            self.stats.record_eviction(len(idle))
        return bool(idle)

    def ingest_acked(self, topic: str, payload: bytes, arrival: float) -> None:
        """A QoS>=1 reading: ingested, then journaled before paho acknowledges it (on
        return), with its resolved ``seq``. Dropped readings are not journaled."""
        journal = self.journal
        if journal is None or not self._window:
            self.ingest(topic, payload, arrival, hold=True)
            return
        st = self._streams.get(topic)
        if st is not None and st.generation == self._gen and st.pending is None:
            journal.track(st)  # before ingest: the windows this reading completes count
        st = self.ingest(topic, payload, arrival, track=journal.track, hold=True)
        if st is not None:
            journal.append(st, payload, arrival)

    def ingest(
        self,
        topic: str,
        payload: bytes,
        arrival: float,
        track: Callable[[StreamWindow], None] | None = None,
        hold: bool = False,
    ) -> StreamWindow | None:
        """Hot path, on the MQTT network thread for every reading message; returns the
        reading's stream when it added or held rows (None: rejected or dropped). ``track``
        sees a stream created here before the reading's windows are emitted (the journal).
        ``hold``: an acknowledged reading, held when it arrives ahead of missing ones
        (:mod:`edge_agent.ingest.reorder`)."""
        if not self._window:
            self.dead_letter(topic, payload, "no-model", "no model loaded yet")
            return None
        try:
            r = decode(payload, self._names, self._window, self.max_bytes)
        except PayloadError as exc:
            self.dead_letter(topic, payload, exc.reason, exc.message)
            return None
        except Exception as exc:  # a validator bug must not kill ingest
            log.exception("payload decoder failed")
            self.dead_letter(topic, payload, "internal", repr(exc)[:200])
            return None
        st = self._streams.get(topic)
        if st is None or st.generation != self._gen:
            st = self._stream(topic)  # only now: a valid reading earns a table slot
            if st is None:
                return None
            if track is not None:
                track(st)
        st.last_seen = arrival
        self.stats.readings += r.rows
        seq = r.seq
        if (
            hold
            and seq is not None
            and st.next_seq is not None
            and seq - r.rows + 1 > st.next_seq
            and r.rows < self._window  # a whole window needs no earlier rows
            and self.reorder_s > 0
        ):
            reading = HeldReading(seq - r.rows + 1, seq, r.values, r.rows, r.ts, arrival, payload)
            if not st.hold(reading):
                self.stats.duplicates += r.rows  # a redelivery of a held reading
                return None
            self.stats.held += r.rows
            self._holding.add(st)
            self._release(st, arrival)  # only if waiting has expired or too much is held
            return st
        kind = self._accept(st, seq, r.rows, r.values, r.ts, arrival)
        if st.reorder:  # (the attribute, not holding(): one call less per reading)
            if kind == "ok":
                self.stats.reordered += r.rows  # a missing reading came: no gap, not late
            self._release(st, arrival)
        return None if kind == "dup" or kind == "late" else st

    def _accept(
        self,
        st: StreamWindow,
        seq: int | None,
        rows: int,
        values: Any,
        ts: float | None,
        arrival: float,
    ) -> str:
        """Window one decoded reading; returns how it fell (ok/gap/dup/late/partial)."""
        stats = self.stats
        kind, missing = st.classify(seq, rows)
        if kind == "gap":
            stats.gaps += 1
            stats.missing += missing
            st.reset(seq, rows)
        elif kind == "dup" or kind == "late":
            if seq is not None and seq >= (st.next_seq or 0) and rows > 1:
                # overlaps what we have but brings new rows: keep only the new ones
                skip = rows - (seq - st.next_seq + 1)  # type: ignore[operator]
                values = values[skip:]
                kind = "partial"
            elif kind == "dup":
                stats.duplicates += rows
                return kind
            else:
                stats.late += rows
                return kind
        elif st.next_seq is None:
            st.reset(seq, rows)
        if rows == 1:
            win = st.push_row(values, seq)
            if win is not None:
                self._emit(st, win, st.next_seq - 1, ts, arrival)  # type: ignore[operator]
            return kind
        if rows == self._window:
            st.reset(seq, rows)  # a whole window is one request on its own
        last = seq if seq is not None else (st.next_seq or 0) + len(values) - 1
        for win, i in st.push_rows(values, seq):
            self._emit(st, win, last - (len(values) - 1 - i), ts, arrival)
        return kind

    def _release(self, st: StreamWindow, now: float) -> None:
        """Feed the held readings that now follow the run (all of them once waiting for
        the missing ones has expired)."""
        while (h := st.release(now, self.reorder_s, self.reorder_rows)) is not None:
            self._accept(st, h.seq, h.rows, h.values, h.ts, h.arrival)
        if not st.holding():
            self._holding.discard(st)

    def release_expired(self, now: float) -> None:
        """MQTT thread, a few times a second: stop waiting for readings that never came
        (a stream that went quiet after a gap would otherwise hold its last readings)."""
        if self._holding:
            for st in list(self._holding):
                if st.generation != self._gen:
                    # A stream of the model layout before a swap: its held rows cannot
                    # feed the new model (open windows are dropped on a swap the same way).
                    self._holding.discard(st)
                    continue
                self._release(st, now)

    def _emit(
        self,
        st: StreamWindow,
        win: np.ndarray,
        seq: int,
        ts: float | None,
        arrival: float,
        wake: bool = True,
    ) -> None:
        if self._capture is not None:
            self._capture.append((st, win, seq, ts))
            return
        self.stats.requests += 1
        origin, deadline = self.clock.window(ts, arrival)
        if ts is None:
            ts = time.time()  # results always carry a ts; this one is ours
        req = Request(st, win, seq, ts, arrival, deadline, origin)
        if self.tracer is not None:
            req.trace = self.tracer.sample()
        if st.pending is not None:
            st.pending[seq] = req  # journaled stream: unanswered until its result is out
        self._pending.append(req)
        if wake and not self.inline:
            self._wake_loop()

    @contextlib.contextmanager
    def capturing(self) -> Iterator[list[tuple[StreamWindow, np.ndarray, int, float | None]]]:
        """While the journal replays, windows emitted by re-fed readings are collected in
        the yielded list instead of queued (replay decides which are still unanswered)."""
        captured: list[tuple[StreamWindow, np.ndarray, int, float | None]] = []
        self._capture = captured
        try:
            yield captured
        finally:
            self._capture = None

    def emit_replayed(
        self, st: StreamWindow, win: np.ndarray, seq: int, ts: float | None, arrival: float
    ) -> None:
        """Queue a window rebuilt from the journal; it waits for :meth:`wake` (the agent
        calls it once the broker is connected: results published before would be dropped)."""
        self._emit(st, win, seq, ts, arrival, wake=False)

    def wake(self) -> None:
        """Hand every queued window to the dispatcher now (any thread)."""
        self._wake_loop()

    def _wake_loop(self) -> None:
        if not self._wake and self.loop is not None:
            self._wake = True
            self.loop.call_soon_threadsafe(self._drain)

    # -- inline batches (MQTT thread) ----------------------------------------------------
    # For a cheap model, skipping three thread hand-offs (event loop, executor, back) is
    # worth more than overlapping compute with reading: on a busy node every hand-off waits
    # for the scheduler. The dispatcher decides per batch (``Dispatcher.try_inline``) and
    # declines expensive batches, remote routes and anything while the loop has a backlog
    # (EDF order is kept there).

    def end_of_burst(self) -> None:
        """MQTT thread, after each drained socket read: batch what the read produced,
        inline where the dispatcher agrees, else on the loop."""
        pending = self._pending
        dispatcher = self.dispatcher
        if not self.inline or not pending or dispatcher is None:
            return
        if self._wake:
            return  # the loop is already draining: keep EDF order there
        limit = dispatcher.max_batch
        while pending:
            batch = [pending.popleft() for _ in range(min(limit, len(pending)))]
            try:
                ran = dispatcher.try_inline(batch)
            except Exception:  # a bug guard: the loop path still answers every request
                log.exception("inline batch failed; handing it to the dispatcher")
                ran = False
            if not ran:
                pending.extendleft(reversed(batch))
                self.wake()
                return

    def mid_burst(self) -> None:
        """MQTT thread, during a long read: once the oldest window has waited
        ``flush_after_s``, answer what is pending. Without it, a window completed at the
        start of a 256-packet read waits for the whole read to be parsed (several ms on a
        busy node)."""
        pending = self._pending
        if self.inline and pending and time.monotonic() - pending[0].arrival >= self.flush_after_s:
            self.end_of_burst()

    def dead_letter(self, topic: str, payload: bytes, reason: str, detail: str) -> None:
        self.stats.deadletter_by_reason[reason] += 1
        self.stats.metrics.deadletter.labels(reason).inc()
        msg = dead_letter_json(self.agent_id, topic, payload, reason, detail)
        try:
            self.publisher.publish(self._deadletter_topic, msg, 0, False)
        except Exception:  # the broker being gone must not turn bad input into a crash
            log.debug("dead-letter publish failed", exc_info=True)

    # -- event loop ----------------------------------------------------------------------
    def _drain(self) -> None:
        self._wake = False
        pending = self._pending
        batch = []
        while pending:
            batch.append(pending.popleft())
        if batch and self.dispatcher is not None:
            self.dispatcher.add(batch)
