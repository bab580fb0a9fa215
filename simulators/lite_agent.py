"""A lightweight simulated edge agent: the control-plane half of an agent, no inference.

What the gateway sees from it is what it sees from ``edge-agent``: an MQTT session of
its own (client id ``lite-{agent}``, a retained QoS-1 last will on its status topic),
heartbeats in the :mod:`bus.heartbeat` format (per-model metrics,
``update`` field, health) retained at QoS 1, subscriptions to its agent and site desired
state, and bundle downloads from the gateway with an agent token. The desired-state
check is the real one: ``bus.desired.verify_desired`` against the gateway key, target,
and the sequence/digest rule of ``edge_agent.model.updater`` (its ``Sequences`` and
``origin``). What is simulated: inference (counters grow at ``inference_hz``, latency is
a stable per-agent figure), the install (``update_s`` of waiting, failing for a
deterministic ``failure_rate`` share of (agent, version) pairs), and the bundle itself:
a :class:`BundleCache` shared by all agents of one process downloads each URL once
(checked against the desired sha256) and counts a download per agent.

Thousands run in one event loop (:class:`LiteFleet`): a session is an asyncio protocol
(:mod:`simulators.mqtt_session`), heartbeats are ``call_later`` chains, and only an
update in progress has a task.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import random
import time
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from bus.desired import Desired, UpdatePhase, UpdateState, WantedModel, verify_desired
from bus.heartbeat import Health, Heartbeat, Metrics, ServedModel
from bus.topics import Topics
from edge_agent.model.updater import Sequences, origin
from models.errors import EdgecloudError, HashMismatch, InvalidInput, PermissionDenied, Unavailable
from models.signing import TrustedKeys
from simulators.mqtt_session import Session, open_session

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LiteConfig:
    """How every simulated agent of a fleet behaves."""

    heartbeat_s: float = 10.0
    update_s: float = 1.0  # mean simulated install time (uniform 0.5x..1.5x)
    failure_rate: float = 0.0  # share of (agent, version) installs that fail
    #: version -> failure rate, overriding ``failure_rate`` (a bad version for rollbacks)
    failing_versions: dict[int, float] = field(default_factory=dict)
    inference_hz: float = 5.0  # simulated results per second per model
    p50_ms: float = 4.0
    p99_ms: float = 12.0
    keep: int = 3  # installed versions kept per model (instant rollback)
    seed: int = 0

    def fails(self, agent_id: str, version: int) -> bool:
        """Deterministic: the same agent fails the same version on every run."""
        rate = self.failing_versions.get(version, self.failure_rate)
        if rate <= 0:
            return False
        h = zlib.crc32(f"{self.seed}:{agent_id}:{version}".encode()) / 2**32
        return h < rate


class BundleCache:
    """One download per bundle URL for the whole simulated fleet, counted per agent."""

    def __init__(self, gateway_url: str, token: str | None, *, timeout_s: float = 120.0) -> None:
        self.origin = origin(gateway_url)
        self.token = token
        self._timeout = aiohttp.ClientTimeout(total=timeout_s, sock_connect=5.0)
        self._session: aiohttp.ClientSession | None = None
        self._inflight: dict[str, asyncio.Future[tuple[str, int]]] = {}
        self.downloads = 0  # real HTTP downloads
        self.bytes = 0
        self.seconds = 0.0  # wall time spent in real downloads
        self.served = 0  # per-agent downloads answered (from the network or the cache)

    async def fetch(self, url: str, sha256: str) -> int:
        """The size of the bundle at ``url`` once its sha256 matched ``sha256``."""
        if origin(url) != self.origin:
            raise PermissionDenied(f"download URL {url[:200]} is not the configured gateway")
        fut = self._inflight.get(url)
        if fut is None or (fut.done() and fut.exception() is not None):
            fut = self._inflight[url] = asyncio.ensure_future(self._download(url))
        digest, size = await asyncio.shield(fut)
        if digest != sha256:
            raise HashMismatch(f"bundle sha256 {digest[:12]}... != desired {sha256[:12]}...")
        self.served += 1
        return size

    async def _download(self, url: str) -> tuple[str, int]:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        digest, size = hashlib.sha256(), 0
        t0 = time.perf_counter()
        try:
            async with self._session.get(url, headers=headers, allow_redirects=False) as resp:
                if resp.status != 200:
                    raise Unavailable(f"bundle download answered HTTP {resp.status}")
                async for chunk in resp.content.iter_chunked(1 << 20):
                    digest.update(chunk)
                    size += len(chunk)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise Unavailable(f"download of {url[:200]} failed: {exc}") from None
        self.seconds += time.perf_counter() - t0
        self.downloads += 1
        self.bytes += size
        return digest.hexdigest(), size

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


@dataclass
class FleetStats:
    """Counters of one simulated fleet (all agents)."""

    heartbeats: int = 0
    publish_failed: int = 0
    desired_received: int = 0
    desired_refused: int = 0
    desired_duplicates: int = 0
    updates_ok: int = 0
    updates_failed: int = 0
    sessions_lost: int = 0
    refusals: Counter[str] = field(default_factory=Counter)
    #: (model, version) -> monotonic time of each agent's swap to it (the latest swap)
    swapped_at: dict[tuple[str, int], dict[str, float]] = field(default_factory=dict)
    failed_at: dict[tuple[str, int], dict[str, float]] = field(default_factory=dict)


class LiteAgent:
    """One simulated agent; every method runs on the fleet's event loop."""

    def __init__(
        self,
        agent_id: str,
        site: str,
        fleet: LiteFleet,
        models: dict[str, int],
    ) -> None:
        self.agent_id, self.site, self.fleet = agent_id, site, fleet
        self.topics = fleet.topics
        self.models = dict(models)  # name -> active version
        self.installed = {name: [v] for name, v in models.items()}
        self.sequences = Sequences(None)
        self.update_state = UpdateState().as_dict()
        rng = random.Random(zlib.crc32(agent_id.encode()) ^ fleet.config.seed)
        self._p50 = fleet.config.p50_ms * rng.uniform(0.8, 1.2)
        self._p99 = fleet.config.p99_ms * rng.uniform(0.8, 1.2)
        self._rng = rng
        self._counted_at = time.monotonic()
        self._inferences = {name: 0.0 for name in models}
        self._task: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self.session: Session | None = None
        self.downloads = 0

    # -- session ---------------------------------------------------------------------------
    async def connect(self, host: str, port: int) -> None:
        will = json.dumps({"agent_id": self.agent_id, "site": self.site, "online": False})
        cfg = self.fleet.config
        self.session = await open_session(
            host,
            port,
            f"lite-{self.agent_id}",
            (self.topics.status(self.agent_id), will.encode()),
            [self.topics.desired(self.agent_id), self.topics.desired(self.site)],
            self._on_message,
            keepalive=max(30, int(cfg.heartbeat_s * 3)),
        )
        self.session.closed.add_done_callback(self._on_closed)
        self.heartbeat()
        # Spread the periodic beats over the interval, as independently started agents do.
        self._schedule(self._rng.uniform(0, cfg.heartbeat_s))

    def _on_closed(self, _: object) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if not self.fleet.stopping:
            self.fleet.stats.sessions_lost += 1

    def _schedule(self, delay: float) -> None:
        self._timer = asyncio.get_running_loop().call_later(delay, self._tick)

    def _tick(self) -> None:
        self.heartbeat()
        self._schedule(self.fleet.config.heartbeat_s)

    def close(self, *, clean: bool = True) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._task is not None:
            self._task.cancel()
        if self.session is not None:
            self.session.close() if clean else self.session.abort()

    # -- heartbeats ------------------------------------------------------------------------
    def _count(self) -> None:
        now = time.monotonic()
        dt, self._counted_at = now - self._counted_at, now
        for name in self.models:
            self._inferences[name] = self._inferences.get(name, 0.0) + dt * (
                self.fleet.config.inference_hz
            )

    def heartbeat_doc(self) -> dict[str, Any]:
        """The agent's heartbeat (:mod:`bus.heartbeat`), with simulated numbers."""
        self._count()
        per_model = {}
        for name in self.models:
            n = int(self._inferences.get(name, 0.0))
            per_model[name] = Metrics(
                inferences=n,
                p50_ms=round(self._p50, 3),
                p99_ms=round(self._p99, 3),
                results=n,
                deadline_met=n,
            )
        total = sum(m.inferences for m in per_model.values())
        return Heartbeat(
            agent_id=self.agent_id,
            site=self.site,
            online=True,
            ts=time.time(),
            models={
                name: ServedModel(version=v, state="serving", metrics=per_model[name])
                for name, v in self.models.items()
            },
            update=dict(self.update_state),
            health=Health(ready=True, broker=True, cloud="none"),
            metrics=Metrics(
                inferences=total,
                p50_ms=round(self._p50, 3) if per_model else 0.0,
                p99_ms=round(self._p99, 3) if per_model else 0.0,
                results=total,
                deadline_met=total,
            ),
            cloud={"configured": False, "target": None, "breaker": "none"},
        ).model_dump(mode="json")

    def heartbeat(self) -> None:
        session = self.session
        payload = json.dumps(self.heartbeat_doc()).encode()
        if session is not None and session.publish(
            self.topics.status(self.agent_id), payload, qos=1, retain=True
        ):
            self.fleet.stats.heartbeats += 1
        else:
            self.fleet.stats.publish_failed += 1

    # -- desired state ---------------------------------------------------------------------
    def _on_message(self, topic: str, payload: bytes) -> None:
        if not payload:
            return  # a cleared retained message: keep what runs
        stats = self.fleet.stats
        stats.desired_received += 1
        try:
            desired = self._admit(payload)
        except EdgecloudError as exc:
            stats.desired_refused += 1
            stats.refusals[exc.reason] += 1
            self._report(UpdateState(), UpdatePhase.FAILED, f"refused desired state: {exc}")
            return
        if desired is None:
            stats.desired_duplicates += 1
            return
        if self._task is not None:
            self._task.cancel()  # the newest accepted document wins
        self._task = asyncio.ensure_future(self._apply_all(desired))

    def _admit(self, payload: bytes) -> Desired | None:
        """The checks of ``edge_agent.model.updater.ModelUpdater._admit``: signature, target,
        sequence."""
        desired = verify_desired(payload, self.fleet.gateway_keys)
        mine = self.agent_id if desired.target_kind == "agent" else self.site
        if desired.target != mine:
            raise PermissionDenied(f"desired state for {desired.target!r} is not for this agent")
        target = f"{desired.target_kind}:{desired.target}"
        digest = hashlib.sha256(payload).hexdigest()
        last, last_digest = self.sequences.seen(target)
        if desired.sequence == last and last_digest == digest:
            return None
        if desired.sequence <= last:
            raise InvalidInput(f"stale desired state: sequence {desired.sequence} <= {last}")
        self.sequences.accept(target, desired.sequence, digest)
        return desired

    async def _apply_all(self, desired: Desired) -> None:
        for name, wanted in sorted(desired.models.items()):
            await self._apply(desired.rollout_id, name, wanted)

    async def _apply(self, rid: str | None, name: str, w: WantedModel) -> None:
        job = UpdateState(rollout_id=rid, model=name, version=w.version)
        cfg, stats = self.fleet.config, self.fleet.stats
        if w.state == "absent":
            if self.models.pop(name, None) is not None:
                self._report(job, UpdatePhase.OK)
            return
        active = self.models.get(name)
        if active == w.version:
            if (self.update_state["model"], self.update_state["version"]) != (name, w.version):
                self._report(job, UpdatePhase.OK)
            return
        if active is not None and w.version < active and not w.rollback:
            self._report(job, UpdatePhase.FAILED, "downgrade refused: not marked as a rollback")
            return
        local = w.version in self.installed.get(name, [])
        try:
            if not local:
                if w.url is None or w.sha256 is None:
                    raise InvalidInput(f"{name}:{w.version} not installed and no url/sha256")
                self.update_state = job.model_copy(
                    update={"state": UpdatePhase.DOWNLOADING}
                ).as_dict()
                await self.fleet.cache.fetch(w.url, w.sha256)
                self.downloads += 1
                await asyncio.sleep(cfg.update_s * self._rng.uniform(0.5, 1.5))
                if cfg.fails(self.agent_id, w.version):
                    raise InvalidInput(f"simulated install failure of {name}:{w.version}")
            else:
                await asyncio.sleep(cfg.update_s * 0.1)  # re-verify only: instant rollback
        except EdgecloudError as exc:
            self._report(job, UpdatePhase.FAILED, f"{exc.reason}: {exc.message}")
            stats.failed_at.setdefault((name, w.version), {})[self.agent_id] = time.monotonic()
            return
        self._count()  # results so far belong to the old version
        self.models[name] = w.version
        kept = [v for v in self.installed.get(name, []) if v != w.version] + [w.version]
        self.installed[name] = kept[-cfg.keep :]
        stats.swapped_at.setdefault((name, w.version), {})[self.agent_id] = time.monotonic()
        self._report(job, UpdatePhase.OK)

    def _report(self, job: UpdateState, phase: UpdatePhase, reason: str | None = None) -> None:
        self.update_state = job.model_copy(update={"state": phase, "reason": reason}).as_dict()
        if phase is UpdatePhase.OK:
            self.fleet.stats.updates_ok += 1
        elif phase is UpdatePhase.FAILED:
            self.fleet.stats.updates_failed += 1
        self.heartbeat()  # a finished step is reported at once, as edge-agent does


class LiteFleet:
    """``n`` simulated agents ``{prefix}-{i:05d}`` over ``sites`` sites, one event loop."""

    def __init__(
        self,
        host: str,
        port: int,
        n: int,
        *,
        gateway_url: str,
        gateway_keys: TrustedKeys,
        token: str | None,
        config: LiteConfig | None = None,
        topics: Topics | None = None,
        models: dict[str, int] | None = None,
        prefix: str = "lite",
        sites: int = 10,
    ) -> None:
        self.host, self.port = host, port
        self.config = config or LiteConfig()
        self.topics = topics or Topics()
        self.gateway_keys = gateway_keys
        self.cache = BundleCache(gateway_url, token)
        self.stats = FleetStats()
        self.stopping = False
        start = models if models is not None else {"motion-edge": 1}
        self.agents = [
            LiteAgent(f"{prefix}-{i:05d}", f"site-{i % max(1, sites)}", self, start)
            for i in range(n)
        ]

    async def start(
        self, concurrency: int = 200, on_progress: Callable[[int], None] | None = None
    ) -> float:
        """Connect every agent (``concurrency`` handshakes at a time); returns seconds."""
        t0 = time.perf_counter()
        gate = asyncio.Semaphore(concurrency)
        done = 0

        async def one(agent: LiteAgent) -> None:
            nonlocal done
            async with gate:
                await agent.connect(self.host, self.port)
            done += 1
            if on_progress is not None and done % 1000 == 0:
                on_progress(done)

        await asyncio.gather(*(one(a) for a in self.agents))
        return time.perf_counter() - t0

    def versions(self, model: str) -> Counter[int | None]:
        return Counter(a.models.get(model) for a in self.agents)

    def on_version(self, model: str, version: int, agent_ids: list[str] | None = None) -> int:
        ids = set(agent_ids) if agent_ids is not None else None
        return sum(
            1
            for a in self.agents
            if a.models.get(model) == version and (ids is None or a.agent_id in ids)
        )

    async def stop(self) -> None:
        self.stopping = True
        for agent in self.agents:
            agent.close()
        await asyncio.sleep(0.1)
        with contextlib.suppress(Exception):
            await self.cache.close()
