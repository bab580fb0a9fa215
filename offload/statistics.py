"""Per-model-version inference statistics in Triton's shape (the statistics extension).

One :class:`ModelStatistics` per loaded version is the single record of what happened to
its requests: the gRPC ``ModelStatistics`` RPC, ``GET /v2/models/{m}/stats`` and the
Triton-named Prometheus counters (``nv_inference_*``) all read it, so the three can never
disagree. Durations are cumulative nanoseconds like Triton's; the compute durations are
added once per request (``inference_stats``) and once per execution (``batch_stats``).

Writers are the event loop (request outcomes) and the compute threads (queue and compute
times), so every update takes the object's lock; reads take a consistent snapshot.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

#: Failure reasons, Triton's vocabulary (the ``reason`` label of nv_inference_request_failure).
REJECTED, CANCELED, BACKEND, OTHER = "REJECTED", "CANCELED", "BACKEND", "OTHER"


@dataclass
class Duration:
    count: int = 0
    ns: int = 0

    def add(self, seconds: float, times: int = 1) -> None:
        self.count += times
        self.ns += int(seconds * 1e9) * times

    def as_dict(self) -> dict[str, int]:
        return {"count": self.count, "ns": self.ns}


@dataclass
class _BatchStat:
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)


@dataclass(frozen=True)
class Snapshot:
    """A consistent copy of one version's statistics."""

    name: str
    version: str
    last_inference_ms: int
    inference_count: int
    execution_count: int
    success: Duration
    fail: Duration
    fail_by_reason: dict[str, int]
    queue: Duration
    compute_input: Duration
    compute_infer: Duration
    compute_output: Duration
    batches: dict[int, _BatchStat]

    def as_triton(self) -> dict[str, Any]:
        """Triton's ``$model_stat`` JSON object (also ParseDict-able into the protobuf)."""
        empty = {"count": 0, "ns": 0}
        return {
            "name": self.name,
            "version": self.version,
            "last_inference": self.last_inference_ms,
            "inference_count": self.inference_count,
            "execution_count": self.execution_count,
            "inference_stats": {
                "success": self.success.as_dict(),
                "fail": self.fail.as_dict(),
                "queue": self.queue.as_dict(),
                "compute_input": self.compute_input.as_dict(),
                "compute_infer": self.compute_infer.as_dict(),
                "compute_output": self.compute_output.as_dict(),
                "cache_hit": empty,
                "cache_miss": empty,
            },
            "batch_stats": [
                {
                    "batch_size": size,
                    "compute_input": b.compute_input.as_dict(),
                    "compute_infer": b.compute_infer.as_dict(),
                    "compute_output": b.compute_output.as_dict(),
                }
                for size, b in sorted(self.batches.items())
            ],
        }


class ModelStatistics:
    """The running totals of one model version."""

    def __init__(self, name: str, version: str) -> None:
        self.name = name
        self.version = version
        self._lock = threading.Lock()
        self._last_ms = 0
        self._inferences = 0
        self._executions = 0
        self._success = Duration()
        self._fail = Duration()
        self._fail_by_reason: dict[str, int] = {}
        self._queue = Duration()
        self._input = Duration()
        self._infer = Duration()
        self._output = Duration()
        self._batches: dict[int, _BatchStat] = {}

    def succeeded(self, seconds: float) -> None:
        with self._lock:
            self._success.add(seconds)
            self._last_ms = int(time.time() * 1000)

    def failed(self, seconds: float, reason: str) -> None:
        with self._lock:
            self._fail.add(seconds)
            self._fail_by_reason[reason] = self._fail_by_reason.get(reason, 0) + 1

    def queued(self, seconds: float) -> None:
        with self._lock:
            self._queue.add(seconds)

    def executed(
        self, rows: int, requests: int, input_s: float, infer_s: float, output_s: float
    ) -> None:
        """One execution of ``rows`` rows made of ``requests`` requests."""
        with self._lock:
            self._inferences += rows
            self._executions += 1
            self._input.add(input_s, requests)
            self._infer.add(infer_s, requests)
            self._output.add(output_s, requests)
            stat = self._batches.get(rows)
            if stat is None:
                stat = self._batches[rows] = _BatchStat()
            stat.compute_input.add(input_s)
            stat.compute_infer.add(infer_s)
            stat.compute_output.add(output_s)

    def snapshot(self) -> Snapshot:
        def copy(d: Duration) -> Duration:
            return Duration(d.count, d.ns)

        with self._lock:
            return Snapshot(
                name=self.name,
                version=self.version,
                last_inference_ms=self._last_ms,
                inference_count=self._inferences,
                execution_count=self._executions,
                success=copy(self._success),
                fail=copy(self._fail),
                fail_by_reason=dict(self._fail_by_reason),
                queue=copy(self._queue),
                compute_input=copy(self._input),
                compute_infer=copy(self._infer),
                compute_output=copy(self._output),
                batches={
                    size: _BatchStat(
                        copy(b.compute_input), copy(b.compute_infer), copy(b.compute_output)
                    )
                    for size, b in self._batches.items()
                },
            )
