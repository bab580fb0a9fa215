"""A contract-shaped edge status source for page tests that need exact control.

It serves the dashboard through the real ``add_routes`` and a status document in the
shape of notes/contracts.md (``/api/status`` + ``/api/events``) whose numbers evolve
deterministically, so a test can drive the page faster than the real agent's 1 Hz
(memory soak) or feed it edge cases (nulls, many alerts) on demand.
"""

from __future__ import annotations

import asyncio
import json
import math
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from aiohttp import web

from edge_agent.ops.dashboard import add_routes


def status_at(tick: int) -> dict[str, Any]:
    """The status document after `tick` updates."""
    wave = math.sin(tick / 7.0)
    inferences = 1000 + 95 * tick
    offloaded = 30 * tick
    alerts = [
        {
            "ts": 1_764_370_000.0 + i,
            "site": "plant-1",
            "device": f"dev-{i % 7}",
            "stream": "vib",
            "kind": "anomaly" if i % 3 else "class-change",
            "detail": f"score {0.5 + (i % 10) / 20:.2f}",
        }
        for i in range(max(0, tick - 50), tick)
    ]
    return {
        "agent_id": "edge-contract-1",
        "site": "plant-1",
        "uptime_s": 100.0 + tick,
        "broker_connected": True,
        "policy": "slo-aware",
        "slo_ms": 100,
        "model": {"name": "motion-edge", "version": 2 + tick // 1000, "backend": "onnxruntime"},
        "models": [  # one entry per served model (edge_agent/ops/status.py _model_doc)
            {
                "name": "motion-edge",
                "version": 2 + tick // 1000,
                "topics": None,
                "rates": {"readings_per_s": 950.0, "inferences_per_s": 95.0 + 5 * wave},
                "latency_ms": {"p50": 8.0, "p95": 21.5, "p99": 42.25 + 5 * wave},
                "slo_attainment": 0.9975,
                "offload_share": 0.3 + 0.1 * wave,
                "queue_depth": int(12 + 10 * wave),
            },
            {
                "name": "vibration-anomaly",
                "version": 1,
                "topics": "sensors/+/+/vib",
                "rates": {"readings_per_s": 200.0, "inferences_per_s": 1.5},
                "latency_ms": {"p50": 3.0, "p95": 4.0, "p99": 5.5},
                "slo_attainment": 1.0,
                "offload_share": 0.0,
                "queue_depth": 0,
            },
        ],
        "model_history": [
            {"version": 1, "at": 1_764_369_000.0, "event": "loaded"},
            {"version": 2, "at": 1_764_369_500.0, "event": "swapped"},
        ],
        "rates": {"readings_per_s": 950.0 + 50 * wave, "inferences_per_s": 95.0 + 5 * wave},
        "latency_ms": {"p50": 8.0 + wave, "p95": 21.5 + 2 * wave, "p99": 42.25 + 5 * wave},
        "slo_attainment": 0.9975,
        "offload_share": 0.3 + 0.1 * wave,
        "routes": {"local": 700 * tick, "remote": 25 * tick, "hedge": 5 * tick, "shed": tick},
        "reasons": {
            "local-fast-enough": 700 * tick,
            "queue-too-long": 25 * tick,
            "tail-risk": 5 * tick,
        },
        "queue_depth": int(12 + 10 * wave),
        "node": {
            "cpu_percent": 55.0 + 20 * wave,
            "mem_percent": 41.2,
            "rss_mb": 182.0,
            "gpu_percent": None,
            "temperature_c": 61.5,
        },
        "deadletter": {
            "total": 3 + tick // 10,
            "by_reason": {"bad-json": 2, "shape": 1 + tick // 10},
        },
        "alerts": alerts,
        "totals": {
            "readings": 10 * inferences,
            "inferences": inferences,
            "results": inferences,
            "deadletter": 3 + tick // 10,
            "offloaded": offloaded,
            "fallbacks": tick // 5,
        },
    }


class ContractEdge:
    """The dashboard plus a status feed on a free loopback port, in a background thread."""

    def __init__(self, interval_s: float = 1.0, port: int = 0) -> None:
        self.interval_s = interval_s
        self.tick = 0
        self.port = port
        self.paused = threading.Event()  # set: hold the stream (connections stay open)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def status(self) -> dict[str, Any]:
        return status_at(self.tick)

    async def _status(self, _: web.Request) -> web.Response:
        return web.json_response(self.status())

    async def _events(self, request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await resp.prepare(request)
        assert self._stop is not None
        try:
            while not self._stop.is_set():
                if self.paused.is_set():
                    await asyncio.sleep(0.05)
                    continue
                self.tick += 1
                await resp.write(f"data: {json.dumps(self.status())}\n\n".encode())
                await asyncio.sleep(self.interval_s)
        except ConnectionResetError:
            pass  # the page went away
        return resp

    async def _serve(self, ready: threading.Event) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        app = web.Application()
        add_routes(app)
        app.router.add_get("/api/status", self._status)
        app.router.add_get("/api/events", self._events)
        runner = web.AppRunner(app, shutdown_timeout=0.5)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", self.port, reuse_address=True)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        ready.set()
        await self._stop.wait()
        await runner.cleanup()

    @contextmanager
    def running(self) -> Iterator[ContractEdge]:
        ready = threading.Event()
        thread = threading.Thread(target=asyncio.run, args=(self._serve(ready),), daemon=True)
        thread.start()
        if not ready.wait(10):
            raise TimeoutError("contract edge server did not start")
        try:
            yield self
        finally:
            assert self._loop is not None and self._stop is not None
            self._loop.call_soon_threadsafe(self._stop.set)
            thread.join(10)
