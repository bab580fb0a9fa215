"""One load generator for every server: grpc.aio with pre-serialized ModelInferRequest bytes.

The request is serialized once; each call sends those bytes through a generic unary call
whose serializers are identities, so the client spends its time in gRPC itself, not in
protobuf or numpy. Responses are only checked for size (raw bytes, never decoded).
"""

from __future__ import annotations

import asyncio
import time
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
        }


async def run_cell(
    target: str,
    server: str,
    payload: bytes,
    batch: int,
    concurrency: int,
    seconds: float,
    warmup_s: float = 1.0,
) -> CellResult:
    """Keep ``concurrency`` calls in flight for ``seconds`` after a warm-up."""
    async with grpc.aio.insecure_channel(
        target,
        options=[
            ("grpc.max_receive_message_length", 64 * 1024 * 1024),
            ("grpc.max_send_message_length", 64 * 1024 * 1024),
        ],
    ) as channel:
        call = channel.unary_unary(METHOD, request_serializer=None, response_deserializer=None)
        latencies: list[float] = []
        errors = 0
        measuring = False
        stop_at = 0.0

        async def worker() -> None:
            nonlocal errors
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
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        measuring = True
        errors = 0
        start = time.perf_counter()
        stop_at = start + seconds
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
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
    )
