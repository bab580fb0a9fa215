"""The offload server: gRPC and HTTP (KServe V2, health) and Prometheus, graceful stop.

``async with serve(settings) as server:`` runs it in the current loop (tests, simulators);
:func:`run` is the process entry point that waits for SIGTERM/SIGINT and drains.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor

import grpc
from aiohttp import web
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer

from models.backends import BackendOptions
from offload.admin import AdminPolicy
from offload.admission import BytesInFlight
from offload.core import InferenceCore, RepositoryControl
from offload.http import V2Routes, server_ssl_context
from offload.metrics import ServerMetrics
from offload.model_config import ServingDefaults
from offload.model_store import ModelStore
from offload.servicer import InferenceServicer
from offload.settings import OffloadSettings
from offload.tls import TlsFiles, server_credentials
from offload.tracing import Tracer

log = logging.getLogger(__name__)
#: Lifecycle lines (ready, draining, stopped): the CLI keeps them at INFO whatever --log-level.
lifecycle_log = logging.getLogger("offload.lifecycle")

SERVICE_NAME = "inference.GRPCInferenceService"


def _window_options(window_bytes: int) -> list[tuple[str, int]]:
    """gRPC core options for a fixed HTTP/2 receive window (``[]`` = BDP probing).

    gRPC checks a message's length prefix only after taking up to the receive window off
    the wire, and BDP probing grows that window from ping timing, by far too much on a
    loaded machine; a fixed window bounds what a burst of oversized requests costs
    (measurements: docs/architecture.md, Admission).
    """
    if window_bytes == 0:
        return []
    # lookahead_bytes sets the target window of each stream and of the connection.
    return [("grpc.http2.bdp_probe", 0), ("grpc.http2.lookahead_bytes", window_bytes)]


class OffloadServer:
    """One running server; ``port``, ``http_port`` and ``metrics_port`` are the bound ports.

    One worker of ``--processes N`` (offload/workers.py) passes ``reuse_port`` (its siblings
    bind the same ports), ``control`` (load/unload go to the supervisor, which applies them
    to every worker) and ``after_load`` (catch up on the repository changes made while it
    was not running, before it binds a port and gets connections).
    """

    def __init__(
        self,
        settings: OffloadSettings,
        *,
        name: str = "offload-server",
        reuse_port: bool = False,
        control: RepositoryControl | None = None,
        after_load: Callable[[ModelStore], Awaitable[None]] | None = None,
    ) -> None:
        self.settings = settings
        self.name = name
        self._reuse_port = reuse_port
        self._after_load = after_load
        self.executor = ThreadPoolExecutor(settings.workers, thread_name_prefix="offload-infer")
        self.metrics = ServerMetrics()
        self.store = ModelStore(
            settings.repository,
            executor=self.executor,
            metrics=self.metrics,
            backend_kind=settings.backend,
            options=BackendOptions(intra_op_threads=settings.intra_op_threads),
            defaults=ServingDefaults(
                max_batch=settings.max_batch,
                max_queue_delay_us=settings.max_queue_delay_us,
                max_queue=settings.max_queue,
                inline_max_us=settings.inline_max_us,
            ),
            instances=settings.workers,
        )
        self.admission = BytesInFlight(settings.max_inflight_bytes, self.metrics.bytes_in_flight)
        self.core = InferenceCore(
            self.store,
            self.metrics,
            self.admission,
            AdminPolicy.from_settings(
                settings.admin_token_file, settings.admin_subjects, settings.tls_ca is not None
            ),
            control,
        )
        if settings.otlp_endpoint:
            self.core.tracer = Tracer(settings.otlp_endpoint, "offload-server")
        self.servicer = InferenceServicer(self.core, settings.max_stream_pending)
        self.health = HealthServicer()
        self.port = 0
        self.http_port = -1
        self.metrics_port = -1
        self._server: grpc.aio.Server | None = None
        self._runners: list[web.AppRunner] = []

    async def _serve_http(self, app: web.Application, port: int, ssl_context: object = None) -> int:
        runner = web.AppRunner(
            app, access_log=None, handle_signals=False, shutdown_timeout=self.settings.grace_s
        )
        await runner.setup()
        self._runners.append(runner)
        site = web.TCPSite(
            runner,
            self.settings.host,
            port,
            ssl_context=ssl_context,  # type: ignore[arg-type]
            reuse_port=self._reuse_port or None,
        )
        try:
            await site.start()
        except OSError as exc:
            raise OSError(f"cannot bind HTTP to {self.settings.host}:{port}: {exc}") from exc
        return int(runner.addresses[0][1])  # the bound port: 0 picks a free one

    async def start(self) -> None:
        """Load the repository and bind every port; on any failure release what started."""
        try:
            await self._start()
        except BaseException:
            await self.stop(grace=0)
            raise

    async def _start(self) -> None:
        s = self.settings
        tls = TlsFiles(s.tls_cert, s.tls_key, s.tls_ca)
        credentials = server_credentials(tls)
        http_ssl = server_ssl_context(tls)
        await self.store.load_all()
        if self._after_load is not None:
            await self._after_load(self.store)
        server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", s.max_message_bytes),
                ("grpc.max_send_message_length", s.max_message_bytes),
                # Off unless a supervisor runs siblings on this port: a second server
                # started by mistake must fail to bind, not silently take half the calls.
                ("grpc.so_reuseport", 1 if self._reuse_port else 0),
                *_window_options(s.http2_window_bytes),
                # Bursts of thousands of calls must reach the batcher (which bounds them with
                # RESOURCE_EXHAUSTED), not be cancelled by gRPC core's default of 1,000.
                ("grpc.server.max_pending_requests", max(10_000, 2 * s.max_queue)),
                ("grpc.server.max_pending_requests_hard_limit", max(30_000, 6 * s.max_queue)),
            ],
        )
        server.add_generic_rpc_handlers((self.servicer.handler(),))
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        address = f"{s.host}:{s.grpc_port}"
        if credentials is None:
            self.port = server.add_insecure_port(address)
        else:
            self.port = server.add_secure_port(address, credentials)
        if self.port == 0:
            raise OSError(f"cannot bind gRPC to {address}")
        self._server = server
        await server.start()
        for service in ("", SERVICE_NAME):
            await self.health.set(service, health_pb2.HealthCheckResponse.SERVING)
        if s.http_port >= 0:
            routes = V2Routes(self.core, max_body=s.max_message_bytes, mutual_tls=bool(s.tls_ca))
            self.http_port = await self._serve_http(routes.app(), s.http_port, http_ssl)
        if s.metrics_port >= 0:
            self.metrics_port = await self._serve_http(self._metrics_app(), s.metrics_port)
        models = ",".join(f"{m.name}:{m.version}" for m in self.store.loaded()) or "-"
        lifecycle_log.info(
            "%s ready grpc=%s:%d http=%d metrics=%d tls=%s models=%s",
            self.name,
            s.host,
            self.port,
            self.http_port,
            self.metrics_port,
            "mutual" if s.tls_ca else ("on" if credentials else "off"),
            models,
        )

    def _metrics_app(self) -> web.Application:
        async def metrics(request: web.Request) -> web.Response:
            return web.Response(
                body=self.metrics.exposition(),
                headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"},
            )

        async def readyz(request: web.Request) -> web.Response:
            if not self.core.accepting:
                return web.json_response({"status": "draining"}, status=503)
            return web.json_response({"status": "ready", "workers": 1})

        async def healthz(request: web.Request) -> web.Response:
            return web.json_response({"status": "ok"})

        # Readiness here too, in plain HTTP: the same probe works whether this port belongs
        # to one process or to the --processes supervisor (ready when all workers are).
        app = web.Application()
        app.router.add_get("/metrics", metrics)
        app.router.add_get("/readyz", readyz)
        app.router.add_get("/healthz", healthz)
        return app

    async def stop(self, grace: float | None = None) -> None:
        """Refuse new work, let in-flight requests finish within ``grace``, release all."""
        grace = self.settings.grace_s if grace is None else grace
        self.core.accepting = False
        await self.health.enter_graceful_shutdown()
        if self._server is not None:
            await self._server.stop(grace)
            self._server = None
        for runner in self._runners:
            # Keep-alive connections may still carry in-flight HTTP requests: drain them.
            await runner.shutdown()
            await runner.cleanup()
        self._runners.clear()
        await self.store.close()
        self.executor.shutdown(wait=True)
        if self.core.tracer is not None:
            self.core.tracer.close()  # exports what is left
        lifecycle_log.info("%s stopped", self.name)


@contextlib.asynccontextmanager
async def serve(settings: OffloadSettings) -> AsyncIterator[OffloadServer]:
    server = OffloadServer(settings)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


async def run(settings: OffloadSettings) -> int:
    """Serve until SIGTERM or SIGINT, then drain in-flight requests and exit 0."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with serve(settings):
        await stop.wait()
        lifecycle_log.info("signal received: draining for up to %.1fs", settings.grace_s)
    return 0
