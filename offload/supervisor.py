"""``offload-server --processes N``: a supervisor and N worker processes on the same ports.

Python runs one request's protobuf parsing, batching and response on one core at a time;
on a node with more cores the way up is more processes. Each worker
(offload/workers.py) binds the same gRPC (and HTTP) port with SO_REUSEPORT and the
kernel spreads incoming connections over them; each has its own batcher and model store.

The supervisor (this module) binds no serving socket itself. It

* resolves a port of 0 once and holds it (bound, never listening) so that every worker,
  and every restart of one, shares that one port, and nobody else takes it in between;
* owns the one ``/metrics`` endpoint (workers' scrapes merged, offload/merged_metrics.py)
  and ``/readyz``, ready only while every worker is;
* keeps one repository view: a load/unload that any worker receives is applied to every
  worker before the call returns, and remembered, so a restarted worker replays it;
* restarts a worker that exits unasked (logged, ``offload_worker_restarts_total``);
* on SIGTERM/SIGINT lets every worker drain (they get SIGTERM) and stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import sys
import tempfile
import time
from pathlib import Path

from aiohttp import web

from models.errors import EdgecloudError, Status
from offload.control import ChannelClosed, ControlChannel, Message
from offload.merged_metrics import SupervisorMetrics
from offload.settings import OffloadSettings
from offload.workers import OPS

log = logging.getLogger(__name__)
lifecycle_log = logging.getLogger("offload.lifecycle")

#: A worker that lived shorter than this before exiting counts as crash-looping.
STABLE_S = 10.0
MAX_BACKOFF_S = 10.0
#: Beyond the workers' own --grace-s, how long they get before SIGKILL.
KILL_MARGIN_S = 5.0
SCRAPE_TIMEOUT_S = 5.0


class WorkerFailed(OSError):
    """A worker exited before it ever got ready (bad settings, port taken, broken model)."""


def reserve_port(host: str, port: int) -> socket.socket:
    """Bind ``host:port`` with SO_REUSEPORT without listening: resolves 0 to a free port and
    keeps it ours (workers bind it too, with SO_REUSEPORT; a bound socket that does not
    listen gets no connections)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise OSError(f"cannot bind {host}:{port}: {exc}") from exc
    return sock


class WorkerSlot:
    """One worker position: its current process, its control channel, its readiness."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.pid = 0
        self.ready = False
        self.ever_ready = False
        self._process: asyncio.subprocess.Process | None = None
        self._channel: ControlChannel | None = None
        self._became_ready = asyncio.Event()

    @property
    def attached(self) -> bool:
        return self._channel is not None and not self._channel.closed

    def started(self, process: asyncio.subprocess.Process) -> None:
        self._process = process
        self.pid = process.pid

    def attach(self, channel: ControlChannel) -> None:
        self._channel = channel

    def detach(self, channel: ControlChannel) -> None:
        if self._channel is channel:
            self._channel = None
            self.ready = False

    def mark_ready(self) -> None:
        self.ready = self.ever_ready = True
        self._became_ready.set()

    def exited(self) -> None:
        self.ready = False
        self._process = None

    async def wait_ready(self) -> None:
        await self._became_ready.wait()

    async def call(self, body: Message, timeout_s: float | None = None) -> Message:
        if self._channel is None:
            raise ChannelClosed(f"worker {self.index} is not connected")
        return await self._channel.call(body, timeout_s)

    def signal(self, sig: int) -> None:
        if self._process is not None and self._process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self._process.send_signal(sig)


class Supervisor:
    """Runs ``processes`` workers; ``port``/``http_port``/``metrics_port`` are the bound ports."""

    def __init__(self, settings: OffloadSettings, processes: int) -> None:
        self.settings = settings
        self.metrics = SupervisorMetrics()
        self.metrics.workers.set(processes)
        self.port = 0
        self.http_port = -1
        self.metrics_port = -1
        self._slots = [WorkerSlot(i) for i in range(processes)]
        self._keepers: list[asyncio.Task[None]] = []
        #: Every repository change so far, in order: what a restarted worker replays.
        self._history: list[Message] = []
        self._control_lock = asyncio.Lock()
        self._stopping = False
        self._stop_requested = asyncio.Event()
        self._reserved: list[socket.socket] = []
        self._tmp = tempfile.TemporaryDirectory(prefix="offload-supervisor-")
        self._socket_path = str(Path(self._tmp.name) / "control.sock")
        self._control_server: asyncio.AbstractServer | None = None
        self._runner: web.AppRunner | None = None
        self._worker_settings: dict[str, object] = {}

    # -- lifecycle --------------------------------------------------------------------
    async def start(self) -> None:
        """Start every worker and wait until all are ready; on failure stop what started."""
        try:
            await self._start()
        except BaseException:
            await self.stop(grace=0)
            raise

    async def _start(self) -> None:
        s = self.settings
        grpc_socket = reserve_port(s.host, s.grpc_port)
        self._reserved.append(grpc_socket)
        self.port = int(grpc_socket.getsockname()[1])
        if s.http_port >= 0:
            http_socket = reserve_port(s.host, s.http_port)
            self._reserved.append(http_socket)
            self.http_port = int(http_socket.getsockname()[1])
        self._worker_settings = s.model_copy(
            update={
                "processes": 1,
                "grpc_port": self.port,
                "http_port": self.http_port,
                "metrics_port": -1,  # the supervisor's /metrics merges theirs
            }
        ).model_dump(mode="json")
        self._control_server = await asyncio.start_unix_server(
            self._connected, self._socket_path, limit=64 * 1024 * 1024
        )
        self._keepers = [
            asyncio.create_task(self._keep(slot), name=f"worker-{slot.index}")
            for slot in self._slots
        ]
        all_ready: asyncio.Task[None] = asyncio.create_task(self._all_ready())
        waiting: set[asyncio.Task[None]] = {all_ready, *self._keepers}
        done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        if all_ready not in done:
            all_ready.cancel()
            for keeper in done:
                keeper.result()  # raises WorkerFailed
            raise WorkerFailed("a worker stopped during startup")
        if s.metrics_port >= 0:
            self.metrics_port = await self._serve_metrics(s.metrics_port)
        self._update_ready()
        lifecycle_log.info(
            "offload-server ready grpc=%s:%d http=%d metrics=%d processes=%d pids=%s",
            s.host,
            self.port,
            self.http_port,
            self.metrics_port,
            len(self._slots),
            ",".join(str(slot.pid) for slot in self._slots),
        )

    async def stop(self, grace: float | None = None) -> None:
        """SIGTERM every worker (each drains within --grace-s), SIGKILL the late ones."""
        grace = self.settings.grace_s if grace is None else grace
        self._stopping = True
        self._stop_requested.set()
        self._update_ready()
        for slot in self._slots:
            slot.signal(signal.SIGTERM)
        if self._keepers:
            _, late = await asyncio.wait(self._keepers, timeout=grace + KILL_MARGIN_S)
            for slot in self._slots:
                if late:
                    slot.signal(signal.SIGKILL)
            if late:
                log.warning("%d worker(s) did not drain in time: killed", len(late))
                await asyncio.wait(late, timeout=KILL_MARGIN_S)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._control_server is not None:
            self._control_server.close()
            self._control_server = None
        for sock in self._reserved:
            sock.close()
        self._reserved.clear()
        self._tmp.cleanup()
        lifecycle_log.info("offload-server stopped")

    async def _keep(self, slot: WorkerSlot) -> None:
        """Run the slot's worker; restart it whenever it exits unasked."""
        quick_exits = 0
        while not self._stopping:
            process = await asyncio.create_subprocess_exec(*self._command(slot.index))
            slot.started(process)
            if self._stopping:  # stop() signalled the slots while this one was spawning
                slot.signal(signal.SIGTERM)
            log.info("worker %d started pid=%d", slot.index, process.pid)
            began = time.monotonic()
            rc = await process.wait()
            slot.exited()
            self._update_ready()
            if self._stopping:
                log.info("worker %d pid=%d exited rc=%d", slot.index, process.pid, rc)
                return
            if not slot.ever_ready:
                raise WorkerFailed(
                    f"worker {slot.index} exited with code {rc} before it was ready "
                    "(its log lines above say why)"
                )
            quick_exits = quick_exits + 1 if time.monotonic() - began < STABLE_S else 0
            pause = min(MAX_BACKOFF_S, 0.2 * (2**quick_exits - 1))
            self.metrics.restarts.labels(str(slot.index)).inc()
            log.error(
                "worker %d pid=%d exited unasked (code %d); restarting in %.1fs",
                slot.index,
                process.pid,
                rc,
                pause,
            )
            # Wake up early for stop(): it should not wait out a crash loop's backoff.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop_requested.wait(), pause)

    async def _all_ready(self) -> None:
        for slot in self._slots:
            await slot.wait_ready()

    def _command(self, index: int) -> list[str]:
        s = self.settings
        return [
            sys.executable,
            "-m",
            "offload.workers",
            *("--control", self._socket_path, "--index", str(index)),
            *("--log-level", s.log_level, "--log-format", s.log_format),
        ]

    def _update_ready(self) -> None:
        self.metrics.workers_ready.set(sum(slot.ready for slot in self._slots))

    @property
    def ready(self) -> bool:
        return not self._stopping and all(slot.ready for slot in self._slots)

    # -- control channel ----------------------------------------------------------------
    async def _connected(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        holder: list[ControlChannel] = []
        channel = ControlChannel(reader, writer, lambda body: self._on_call(holder[0], body))
        holder.append(channel)
        try:
            await channel.serve()
        finally:
            for slot in self._slots:
                slot.detach(channel)
            self._update_ready()

    async def _on_call(self, channel: ControlChannel, body: Message) -> Message:
        op = body.get("op")
        if op == "hello":
            slot = self._slots[int(body["index"])]
            # Under the lock: the worker gets the state as of now, and every later change is
            # sent to it (it applies them once started), never one twice or none.
            async with self._control_lock:
                slot.attach(channel)
                return {
                    "settings": self._worker_settings,
                    "replay": list(self._history),
                    "mirror": await self._loaded_elsewhere(slot),
                }
        if op == "ready":
            slot = self._slots[int(body["index"])]
            slot.mark_ready()
            self._update_ready()
            lifecycle_log.info("worker %d ready pid=%d", slot.index, slot.pid)
            return {}
        if op in OPS:
            return await self._apply_everywhere(body)
        raise EdgecloudError(f"unknown control call {op!r}", status=Status.INVALID_ARGUMENT)

    async def _loaded_elsewhere(self, joining: WorkerSlot) -> list[object] | None:
        """What a ready sibling serves (None when none is ready: the worker replays the
        history instead). A sibling's list beats the history: it also leaves out models
        put on disk since the start but never loaded through the repository API."""
        for slot in self._slots:
            if slot is joining or not slot.ready:
                continue
            try:
                reply = await slot.call({"op": "loaded"}, SCRAPE_TIMEOUT_S)
            except (EdgecloudError, TimeoutError) as exc:
                log.warning("worker %d did not list its models: %s", slot.index, exc)
                continue
            return list(reply["models"])
        return None

    async def _apply_everywhere(self, body: Message) -> Message:
        """Apply one load/unload to every connected worker; any one's failure is the call's."""
        change = {"op": body["op"], "name": body["name"], "version": body.get("version")}
        async with self._control_lock:
            self._history.append(change)
            targets = [slot for slot in self._slots if slot.attached]
            results = await asyncio.gather(
                *(slot.call(change) for slot in targets), return_exceptions=True
            )
        versions: list[int] = []
        failures: list[tuple[WorkerSlot, EdgecloudError]] = []
        for slot, result in zip(targets, results, strict=True):
            if isinstance(result, ChannelClosed):
                # Died mid-change: its restart replays the change from the history.
                log.warning("worker %d went away during %s %s", slot.index, *change.values())
            elif isinstance(result, EdgecloudError):
                failures.append((slot, result))
            elif isinstance(result, BaseException):
                failures.append((slot, EdgecloudError(repr(result))))
            else:
                versions = result.get("versions", versions)
        if failures:
            slot, first = failures[0]
            if len(failures) == len(targets) and all(
                e.message == first.message for _, e in failures
            ):
                raise EdgecloudError(first.message, status=first.status)
            raise EdgecloudError(
                f"worker {slot.index}: {first.message} "
                f"({len(failures)} of {len(targets)} worker processes failed)",
                status=first.status,
            )
        return {"versions": versions}

    # -- /metrics, /readyz, /healthz ----------------------------------------------------
    async def _serve_metrics(self, port: int) -> int:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/healthz", self._healthz)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        self._runner = runner
        site = web.TCPSite(runner, self.settings.host, port)
        try:
            await site.start()
        except OSError as exc:
            raise OSError(f"cannot bind metrics to {self.settings.host}:{port}: {exc}") from exc
        return int(runner.addresses[0][1])

    async def _scrape(self, slot: WorkerSlot) -> tuple[int, int, str] | None:
        try:
            reply = await slot.call({"op": "metrics"}, SCRAPE_TIMEOUT_S)
        except (EdgecloudError, TimeoutError) as exc:
            log.warning("worker %d did not hand over its metrics: %s", slot.index, exc)
            return None
        return slot.index, slot.pid, str(reply["text"])

    async def _metrics(self, request: web.Request) -> web.Response:
        scraped = await asyncio.gather(
            *(self._scrape(slot) for slot in self._slots if slot.attached)
        )
        body = self.metrics.exposition([s for s in scraped if s is not None])
        return web.Response(
            body=body, headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"}
        )

    async def _readyz(self, request: web.Request) -> web.Response:
        ready = sum(slot.ready for slot in self._slots)
        doc = {"ready_workers": ready, "workers": len(self._slots)}
        if self._stopping:
            return web.json_response({"status": "draining", **doc}, status=503)
        if not self.ready:
            return web.json_response({"status": "degraded", **doc}, status=503)
        return web.json_response({"status": "ready", **doc})

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})


async def run(settings: OffloadSettings, processes: int) -> int:
    """Supervise ``processes`` workers until SIGTERM or SIGINT, then drain them and exit 0."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    supervisor = Supervisor(settings, processes)
    starting = asyncio.create_task(supervisor.start())
    stopping = asyncio.create_task(stop.wait())
    await asyncio.wait([starting, stopping], return_when=asyncio.FIRST_COMPLETED)
    if not starting.done():  # a signal while workers load their models: stop them now
        starting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await starting
        return 0
    stopping.cancel()
    starting.result()  # startup failures propagate to the CLI (exit 1)
    try:
        await stop.wait()
        lifecycle_log.info("signal received: draining for up to %.1fs", settings.grace_s)
    finally:
        await supervisor.stop()
    return 0
