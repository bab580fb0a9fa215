"""One load generator for every server: grpc.aio with pre-serialized ModelInferRequest bytes.

The request is serialized once; each call sends those bytes through a generic unary call
whose serializers are identities, so the client spends its time in gRPC itself, not in
protobuf or numpy. Responses are only checked for size (raw bytes, never decoded).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass

import grpc
import numpy as np

METHOD = "/inference.GRPCInferenceService/ModelInfer"


@dataclass(frozen=True)
class CellResult:
    server: str
    batch: int
    concurrency: int
    requests: int
    errors: int
    seconds: float
    p50_ms: float
    p99_ms: float
    channels: int = 1
    #: CPU seconds the server's processes (all of them) and this load generator spent
    #: during the measured seconds (0 when not measured).
    server_cpu_s: float = 0.0
    client_cpu_s: float = 0.0

    @property
    def server_cpu_ms_per_req(self) -> float:
        return self.server_cpu_s * 1e3 / self.requests if self.requests else 0.0

    @property
    def req_per_s(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def samples_per_s(self) -> float:
        return self.req_per_s * self.batch

    def as_dict(self) -> dict[str, float | int | str]:
        return {
            "server": self.server,
            "batch": self.batch,
            "concurrency": self.concurrency,
            "requests": self.requests,
            "errors": self.errors,
            "seconds": round(self.seconds, 3),
            "req_per_s": round(self.req_per_s, 1),
            "samples_per_s": round(self.samples_per_s, 1),
            "p50_ms": round(self.p50_ms, 3),
            "p99_ms": round(self.p99_ms, 3),
            "channels": self.channels,
            "server_cpu_s": round(self.server_cpu_s, 3),
            "client_cpu_s": round(self.client_cpu_s, 3),
            "server_cpu_ms_per_req": round(self.server_cpu_ms_per_req, 4),
        }


async def run_cell(
    target: str,
    server: str,
    payload: bytes,
    batch: int,
    concurrency: int,
    seconds: float,
    warmup_s: float = 1.0,
    channels: int = 1,
    server_cpu: Callable[[], float] | None = None,
) -> CellResult:
    """Keep ``concurrency`` calls in flight for ``seconds`` after a warm-up.

    ``channels`` > 1 spreads the calls over that many TCP connections (a server whose
    processes share the port with SO_REUSEPORT is spread by connection, not by call).
    ``server_cpu`` reads the server's CPU seconds, sampled around the measured seconds.
    """
    options = [
        ("grpc.max_receive_message_length", 64 * 1024 * 1024),
        ("grpc.max_send_message_length", 64 * 1024 * 1024),
    ]
    if channels > 1:  # else gRPC shares one connection among same-target channels
        options.append(("grpc.use_local_subchannel_pool", 1))
    async with contextlib.AsyncExitStack() as stack:
        opened = [
            await stack.enter_async_context(grpc.aio.insecure_channel(target, options=options))
            for _ in range(channels)
        ]
        calls = [
            c.unary_unary(METHOD, request_serializer=None, response_deserializer=None)
            for c in opened
        ]
        latencies: list[float] = []
        errors = 0
        measuring = False
        stop_at = 0.0

        async def worker(n: int) -> None:
            nonlocal errors
            call = calls[n % channels]
            perf = time.perf_counter
            while True:
                t0 = perf()
                if t0 >= stop_at:
                    return
                try:
                    await call(payload, timeout=10.0)
                except grpc.aio.AioRpcError:
                    errors += 1
                    continue
                if measuring:
                    latencies.append(perf() - t0)

        stop_at = time.perf_counter() + warmup_s
        await asyncio.gather(*(worker(n) for n in range(concurrency)))
        measuring = True
        errors = 0
        cpu_before = server_cpu() if server_cpu else 0.0
        own_before = time.process_time()
        start = time.perf_counter()
        stop_at = start + seconds
        await asyncio.gather(*(worker(n) for n in range(concurrency)))
        elapsed = time.perf_counter() - start
        own_cpu = time.process_time() - own_before
        cpu = (server_cpu() - cpu_before) if server_cpu else 0.0
    lat = np.asarray(latencies) * 1e3 if latencies else np.zeros(1)
    return CellResult(
        server=server,
        batch=batch,
        concurrency=concurrency,
        requests=len(latencies),
        errors=errors,
        seconds=elapsed,
        p50_ms=float(np.percentile(lat, 50)),
        p99_ms=float(np.percentile(lat, 99)),
        channels=channels,
        server_cpu_s=cpu,
        client_cpu_s=own_cpu,
    )
