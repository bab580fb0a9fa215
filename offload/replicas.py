"""Several cloud-tier replicas behind one offload target, with failover between them.

``--cloud`` may name several ``HOST:PORT`` targets separated by commas, and a DNS name may
resolve to several addresses (a Kubernetes headless Service returns one A record per
ready pod). :class:`ReplicaClient` keeps one :class:`~offload.client.OffloadClient` per
address, so every replica has its own channel, circuit breaker and RTT estimates, and it
re-resolves DNS names every ``resolve_every_s`` (``loop.getaddrinfo`` runs in the default
executor, never on the loop): new pods join, vanished ones are drained (no new calls,
closed once their in-flight calls end).

Each call goes to one replica chosen by the power of two choices among the replicas whose
breaker lets a call through: of two random candidates, the one with fewer calls in
flight, then the lower RTT. A call that fails UNAVAILABLE (refused, reset, breaker open)
or RESOURCE_EXHAUSTED (that replica's queue is full) is tried again on another replica
while the request's deadline lasts, so a replica that goes away fails no request: the
calls it had in flight and the ones sent before its breaker opened land elsewhere. The
inner clients therefore make no retries of their own; this class retries, preferring
replicas not yet tried, and pauses with jittered backoff only once every replica failed.

The agent sees the same interface as one ``OffloadClient`` (``start``, ``close``,
``available``, ``stats``, ``infer``); :attr:`ReplicaClient.stats` documents how the
replicas' numbers are aggregated into one :class:`~offload.stats.RemoteStats`.

With TLS, a replica dialled by the address its name resolved to still checks the server
certificate against that *name* (``grpc.ssl_target_name_override``), so the certificate
needs the Service's DNS name, not every pod IP.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import random
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from models.errors import ConfigError, DeadlineExceeded, EdgecloudError, Status, Unavailable
from offload.breaker import BreakerConfig, BreakerState
from offload.client import OffloadClient
from offload.stats import RemoteStats
from offload.tls import TlsFiles

log = logging.getLogger(__name__)

#: Failures that say "this replica cannot take the call now", not "the call is bad".
_FAIL_OVER = frozenset({Status.UNAVAILABLE, Status.RESOURCE_EXHAUSTED})


@dataclass(frozen=True)
class Target:
    """One entry of ``--cloud``: a host (name or IP literal) and a port."""

    host: str
    port: int

    @property
    def literal(self) -> bool:
        """An IP address: nothing to resolve."""
        try:
            ipaddress.ip_address(self.host)
        except ValueError:
            return False
        return True

    def __str__(self) -> str:
        return join_host_port(self.host, self.port)


def join_host_port(host: str, port: int) -> str:
    """``host:port`` as gRPC wants it (IPv6 literals in brackets)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_targets(spec: str) -> list[Target]:
    """``HOST:PORT[,HOST:PORT...]`` -> targets; a clear ConfigError for anything else."""
    targets: list[Target] = []
    for raw in spec.split(","):
        item = raw.strip()
        if not item:
            continue
        host, sep, port_s = item.rpartition(":")
        host = host.removeprefix("[").removesuffix("]")
        if not sep or not host or not port_s.isdigit() or not 0 < int(port_s) < 65536:
            raise ConfigError(f"--cloud target {item!r} is not HOST:PORT")
        target = Target(host, int(port_s))
        if target not in targets:
            targets.append(target)
    if not targets:
        raise ConfigError("--cloud names no HOST:PORT target")
    return targets


class Replica:
    """One address's client plus what the chooser needs: calls in flight, draining."""

    def __init__(self, client: OffloadClient) -> None:
        self.client = client
        self.in_flight = 0
        self.draining = False

    @property
    def target(self) -> str:
        return self.client.target

    @property
    def rtt_s(self) -> float:
        return self.client.stats.rtt_ewma_s

    def begin(self) -> None:
        self.in_flight += 1

    def end(self) -> None:
        self.in_flight -= 1

    def drain(self) -> None:
        self.draining = True


class ReplicaClient:
    """An offload client over every replica ``spec`` names; use ``async with`` or start/close."""

    def __init__(
        self,
        spec: str,
        *,
        tls: TlsFiles | None = None,
        breaker: BreakerConfig = BreakerConfig(),  # noqa: B008 - frozen value object
        max_retries: int = 2,
        retry_backoff_s: float = 0.005,
        resolve_every_s: float = 5.0,
        stream: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.spec = spec
        self.targets = parse_targets(spec)
        self._tls = tls
        self._breaker = breaker
        self.max_retries = max_retries
        self._backoff = retry_backoff_s
        self.resolve_every_s = resolve_every_s
        self._stream = stream
        self._clock = clock
        self._replicas: dict[str, Replica] = {}
        self._draining: set[Replica] = set()
        self._resolver: asyncio.Task[None] | None = None
        self._calls = 0
        self._failures = 0
        self.failovers = 0  # attempts that failed over to another replica
        self.resolutions = 0  # DNS re-resolutions that changed the replica set

    @property
    def target(self) -> str:
        return self.spec

    # -- lifecycle ------------------------------------------------------------------------
    async def start(self) -> None:
        await self._apply(await self._resolve())
        if not all(t.literal for t in self.targets):
            self._resolver = asyncio.get_running_loop().create_task(self._resolve_loop())

    async def close(self) -> None:
        if self._resolver is not None:
            self._resolver.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._resolver
            self._resolver = None
        for replica in [*self._replicas.values(), *self._draining]:
            await replica.client.close()
        self._replicas.clear()
        self._draining.clear()

    async def __aenter__(self) -> ReplicaClient:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- the replica set ------------------------------------------------------------------
    async def _resolve(self) -> dict[str, str | None] | None:
        """Every address the targets name now, each with the name it came from (None for
        an IP literal); None when a name does not resolve."""
        addresses: dict[str, str | None] = {}
        loop = asyncio.get_running_loop()
        for t in self.targets:
            if t.literal:
                found = [str(t)]
            else:
                try:
                    infos = await loop.getaddrinfo(t.host, t.port, type=socket.SOCK_STREAM)
                except OSError as exc:
                    # Keep the replicas we know: a DNS hiccup must not empty the set.
                    log.warning("cannot resolve offload target %s: %s", t, exc)
                    return None
                found = sorted({join_host_port(str(info[4][0]), t.port) for info in infos})
            for a in found:
                addresses.setdefault(a, None if t.literal else t.host)
        return addresses

    async def _apply(self, addresses: dict[str, str | None] | None) -> None:
        if addresses is None:
            if self._replicas:
                return
            # Never resolved: hand the names to gRPC, which resolves them itself.
            addresses = {str(t): None for t in self.targets}
        if set(addresses) == set(self._replicas):
            return
        if self._replicas:
            self.resolutions += 1
            log.info("offload replicas now %s", ", ".join(sorted(addresses)))
        for address, name in addresses.items():
            if address not in self._replicas:
                client = OffloadClient(
                    address,
                    tls=self._tls,
                    breaker=self._breaker,
                    max_retries=0,  # this class fails over instead
                    clock=self._clock,
                    stream=self._stream,
                    server_name=name,
                )
                await client.start()
                self._replicas[address] = Replica(client)
        for address in [a for a in self._replicas if a not in addresses]:
            replica = self._replicas.pop(address)
            replica.drain()
            self._draining.add(replica)
        await self._close_drained()

    async def _close_drained(self) -> None:
        idle = [r for r in self._draining if r.in_flight == 0]
        self._draining.difference_update(idle)
        for replica in idle:
            await replica.client.close()

    async def _resolve_loop(self) -> None:
        while True:
            await asyncio.sleep(self.resolve_every_s)
            try:
                await self._apply(await self._resolve())
            except Exception:  # the loop must outlive one bad round
                log.exception("re-resolving offload replicas failed")

    @property
    def replicas(self) -> list[Replica]:
        """The replicas calls may go to (draining ones excluded)."""
        return list(self._replicas.values())

    def choose(self, exclude: frozenset[str] = frozenset()) -> Replica | None:
        """Power of two choices among replicas whose breaker allows a call now."""
        ready = [
            r for r in self._replicas.values() if r.target not in exclude and r.client.available
        ]
        if not ready:
            return None
        if len(ready) == 1:
            return ready[0]
        a, b = random.sample(ready, 2)
        return min(a, b, key=lambda r: (r.in_flight, r.rtt_s))

    # -- what the agent reads -------------------------------------------------------------
    @property
    def available(self) -> bool:
        """Whether some replica's breaker lets a call through now."""
        return any(r.client.available for r in self._replicas.values())

    @property
    def stats(self) -> RemoteStats:
        """One RemoteStats for the set, as the routing policy should see the next call.

        RTT and server-time EWMAs are averages over the replicas a call could go to now
        (breaker allows, measured), weighted by their calls; the p95 is the worst such
        replica's (a tail estimate must not be averaged away). With no callable replica,
        every measured replica counts. ``breaker_state`` is the best state of any replica
        (closed if one is closed, then half-open, then open): the set is only "open" when
        no replica can take a call. ``calls`` and ``failures`` count requests made to the
        set and those that failed after every failover; ``excused`` sums the replicas'.
        """
        per = [(r, r.client.stats) for r in self._replicas.values()]
        measured = [(r, s) for r, s in per if s.rtt_ewma_s > 0.0]
        usable = [(r, s) for r, s in measured if r.client.available] or measured
        weights = [max(s.calls, 1) for _, s in usable]
        total = sum(weights)

        def mean(attr: str) -> float:
            if not usable:
                return 0.0
            pairs = zip(usable, weights, strict=True)
            return sum(getattr(s, attr) * w for (_, s), w in pairs) / total

        states = {s.breaker_state for _, s in per}
        state = next(
            (x.value for x in (BreakerState.CLOSED, BreakerState.HALF_OPEN) if x.value in states),
            BreakerState.OPEN.value,
        )
        return RemoteStats(
            rtt_ewma_s=mean("rtt_ewma_s"),
            rtt_p95_s=max((s.rtt_p95_s for _, s in usable), default=0.0),
            server_ewma_s=mean("server_ewma_s"),
            breaker_state=state,
            calls=self._calls,
            failures=self._failures,
            excused=sum(s.excused for _, s in per),
        )

    # -- calls ----------------------------------------------------------------------------
    async def infer(
        self,
        model: str,
        version: int | None,
        inputs: Mapping[str, np.ndarray],
        deadline: float,
        answered_by: dict[str, str] | None = None,
        traceparent: str | None = None,
    ) -> dict[str, np.ndarray]:
        """Run one batch on some replica before ``deadline`` (absolute, this clock).

        Same contract as :meth:`OffloadClient.infer`; failures other than UNAVAILABLE and
        RESOURCE_EXHAUSTED are the request's own and are raised from the first replica.
        """
        self._calls += 1
        tried: set[str] = set()
        last: EdgecloudError | None = None
        pauses = 0
        try:
            while True:
                if deadline - self._clock() <= 0:
                    raise last or DeadlineExceeded(f"no time left to offload {model}")
                replica = self.choose(frozenset(tried))
                if replica is None:
                    if not tried or pauses >= self.max_retries:
                        raise last or Unavailable(
                            f"no offload replica of {self.spec} accepts calls"
                        )
                    # Every replica failed once: back off, then give them another go.
                    pause = self._backoff * (2**pauses) * random.uniform(0.5, 1.5)
                    if self._clock() + pause >= deadline:
                        raise last or Unavailable(f"no offload replica of {self.spec} answered")
                    pauses += 1
                    tried.clear()
                    await asyncio.sleep(pause)
                    continue
                replica.begin()
                try:
                    return await replica.client.infer(
                        model,
                        version,
                        inputs,
                        deadline,
                        answered_by=answered_by,
                        traceparent=traceparent,
                    )
                except EdgecloudError as exc:
                    if exc.status not in _FAIL_OVER:
                        raise
                    last = exc
                    tried.add(replica.target)
                    self.failovers += 1
                finally:
                    replica.end()
                    if replica.draining and replica.in_flight == 0:
                        self._draining.discard(replica)
                        await replica.client.close()
        except EdgecloudError:
            self._failures += 1
            raise
