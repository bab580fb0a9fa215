"""WAN emulation: an asyncio TCP proxy with scripted delay, jitter, bandwidth and outages.

Each direction of each connection is a pipe: a reader stamps every chunk with its
delivery time (now + delay + jitter, never earlier than the previous chunk so TCP's
byte order holds) and a writer releases it then, paced by a token bucket when a
bandwidth cap is set. A schedule of :class:`WanEvent` changes the profile over time,
drops every connection, or starts a full outage (``refuse``: connections are reset and
new ones closed at once, like a dead host behind a firewall sending RSTs; ``blackhole``:
bytes are held until the outage ends, like a dead link).

The kernel path (``ip netns`` + ``tc netem``) is not used: this machine has no netem.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import deque
from collections.abc import Sequence
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

log = logging.getLogger(__name__)


class WanProfile(BaseModel):
    """One-way link properties, applied to each direction independently."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    delay_ms: float = Field(default=0.0, ge=0, description="one-way delay")
    jitter_ms: float = Field(default=0.0, ge=0, description="std-dev of normal jitter")
    bandwidth_kbps: float | None = Field(default=None, gt=0, description="per direction cap")


class WanEvent(BaseModel):
    """At ``at_s``: set a new profile, drop connections, or start an outage."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    at_s: float = Field(ge=0)
    kind: Literal["profile", "drop", "outage", "blackhole"]
    length_s: float = Field(default=0.0, ge=0, description="outage/blackhole duration")
    profile: WanProfile | None = None


class _Pipe:
    """One direction: reader stamps chunks, writer delivers them on time."""

    def __init__(
        self,
        proxy: WanProxy,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        upstream: bool,
    ) -> None:
        self.proxy, self.reader, self.writer, self.upstream = proxy, reader, writer, upstream
        self.queue: deque[tuple[float, bytes]] = deque()
        self.ready = asyncio.Event()
        self.eof = False
        self.last_due = 0.0

    async def pump_in(self) -> None:
        try:
            while data := await self.reader.read(65536):
                p = self.proxy.profile
                delay = p.delay_ms / 1000
                if p.jitter_ms:
                    delay = max(0.0, delay + random.gauss(0.0, p.jitter_ms / 1000))
                due = max(time.monotonic() + delay, self.last_due)
                self.last_due = due
                self.queue.append((due, data))
                self.ready.set()
        except (ConnectionError, OSError):
            pass
        finally:
            self.eof = True
            self.ready.set()

    async def pump_out(self) -> None:
        try:
            while True:
                if not self.queue:
                    if self.eof:
                        break
                    self.ready.clear()
                    await self.ready.wait()
                    continue
                due, data = self.queue[0]
                wait = due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                await self.proxy.link_up.wait()
                self.queue.popleft()
                await self.proxy.pace(len(data), self.upstream)
                self.writer.write(data)
                self.proxy.count(len(data), self.upstream)
                await self.writer.drain()
            if self.writer.can_write_eof():
                self.writer.write_eof()
        except (ConnectionError, OSError):
            pass


class WanProxy:
    """Listens on ``listen_host:listen_port`` (0 = free port) and forwards to the target."""

    def __init__(
        self,
        target_host: str,
        target_port: int,
        *,
        profile: WanProfile | None = None,
        schedule: Sequence[WanEvent] = (),
        listen_host: str = "127.0.0.1",
        listen_port: int = 0,
        name: str = "wan",
    ) -> None:
        self.target = (target_host, target_port)
        self.profile = profile or WanProfile()
        self.schedule = sorted(schedule, key=lambda e: e.at_s)
        self.listen = (listen_host, listen_port)
        self.name = name
        self.bytes_up = 0
        self.bytes_down = 0
        self.connections_total = 0
        self.refused = 0
        self.refusing = False
        self.blackholed = False
        self.link_up = asyncio.Event()
        self.link_up.set()
        self._server: asyncio.Server | None = None
        self._conns: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._bucket: dict[bool, float] = {True: 0.0, False: 0.0}
        self._schedule_task: asyncio.Task[None] | None = None

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("proxy not started")
        return self._server.sockets[0].getsockname()[1]

    @property
    def address(self) -> str:
        return f"{self.listen[0]}:{self.port}"

    async def start(self) -> WanProxy:
        self._server = await asyncio.start_server(self._accept, *self.listen)
        if self.schedule:
            self._schedule_task = asyncio.create_task(
                self._run_schedule(), name=f"{self.name}-sched"
            )
        return self

    async def close(self) -> None:
        if self._schedule_task:
            self._schedule_task.cancel()
        if self._server is not None:
            self._server.close()
        self.link_up.set()
        self.drop_connections()
        # Aborted transports end every pump by themselves; cancelling the connection
        # handlers instead would make asyncio log their CancelledError as an error.
        if self._tasks:
            _, late = await asyncio.wait(list(self._tasks), timeout=2.0)
            for task in late:
                task.cancel()
        if self._server is not None:
            await self._server.wait_closed()

    async def __aenter__(self) -> WanProxy:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def count(self, n: int, upstream: bool) -> None:
        if upstream:
            self.bytes_up += n
        else:
            self.bytes_down += n

    async def pace(self, n: int, upstream: bool) -> None:
        """Token bucket per direction (shared by all connections of the proxy)."""
        kbps = self.profile.bandwidth_kbps
        if kbps is None:
            return
        rate = kbps * 1000 / 8  # bytes per second
        now = time.monotonic()
        start = max(now, self._bucket[upstream])
        self._bucket[upstream] = start + n / rate
        if start > now:
            await asyncio.sleep(start - now)

    def drop_connections(self) -> None:
        """Reset every open connection (both sides), as a NAT timeout or link flap would."""
        for client_w, server_w in list(self._conns):
            for w in (client_w, server_w):
                with contextlib.suppress(Exception):
                    w.transport.abort()
        self._conns.clear()

    def outage(self, on: bool, *, blackhole: bool = False) -> None:
        if blackhole:
            self.blackholed = on
            if on:
                self.link_up.clear()
            else:
                self.link_up.set()
            return
        self.refusing = on
        if on:
            self.drop_connections()

    async def _run_schedule(self) -> None:
        start = time.monotonic()
        for event in self.schedule:
            await asyncio.sleep(max(0.0, start + event.at_s - time.monotonic()))
            log.info("%s: %s at %.1fs", self.name, event.kind, event.at_s)
            if event.kind == "profile" and event.profile is not None:
                self.profile = event.profile
            elif event.kind == "drop":
                self.drop_connections()
            else:
                blackhole = event.kind == "blackhole"
                self.outage(True, blackhole=blackhole)
                task = asyncio.create_task(self._end_outage(event.length_s, blackhole))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    async def _end_outage(self, after_s: float, blackhole: bool) -> None:
        await asyncio.sleep(after_s)
        self.outage(False, blackhole=blackhole)

    async def _accept(self, c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter) -> None:
        # Python 3.11's start_server calls task.exception() on the finished handler task,
        # which raises for a cancelled one: every connection still open when fleet-sim
        # stops (SIGTERM, Ctrl-C) logged a CancelledError traceback. Fixed in 3.12.
        with contextlib.suppress(asyncio.CancelledError):
            await self._relay(c_reader, c_writer)

    async def _relay(self, c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter) -> None:
        if self.refusing:
            self.refused += 1
            c_writer.transport.abort()
            return
        try:
            s_reader, s_writer = await asyncio.open_connection(*self.target)
        except OSError:
            self.refused += 1
            c_writer.transport.abort()
            return
        self.connections_total += 1
        pair = (c_writer, s_writer)
        self._conns.add(pair)
        up, down = _Pipe(self, c_reader, s_writer, True), _Pipe(self, s_reader, c_writer, False)
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            await asyncio.gather(up.pump_in(), up.pump_out(), down.pump_in(), down.pump_out())
        finally:
            self._conns.discard(pair)
            for w in pair:
                w.close()
            if task is not None:
                self._tasks.discard(task)


def netem_available() -> tuple[bool, str]:
    """Whether the kernel path (``ip netns`` + ``tc netem``) could be used, and why not.

    Only checks, never changes, the host: the ``tc`` binary and the ``sch_netem`` module
    (loaded, or present to be loaded).
    """
    import platform
    import shutil
    from pathlib import Path

    if shutil.which("tc") is None or shutil.which("ip") is None:
        return False, "iproute2 (`ip`, `tc`) is not installed"
    if Path("/sys/module/sch_netem").exists():
        return True, "sch_netem is loaded"
    mod_dir = Path("/lib/modules") / platform.release()
    if any(mod_dir.rglob("sch_netem.ko*")) if mod_dir.exists() else False:
        return True, "sch_netem can be loaded"
    return False, f"the kernel ({platform.release()}) has no sch_netem module"
