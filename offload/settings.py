"""Settings of the ``offload-server`` process (env prefix ``OFFLOAD_``)."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from shell.logs import LOG_FORMAT_HELP, LOG_LEVEL_HELP, LogFormat, LogLevel


class OffloadSettings(BaseSettings):
    """One field per CLI flag (``--grpc-port`` <-> ``grpc_port`` <-> ``OFFLOAD_GRPC_PORT``).

    Kubernetes secrets: pass ``_secrets_dir=...`` (the CLI uses ``OFFLOAD_SECRETS_DIR``).
    """

    model_config = SettingsConfigDict(env_prefix="OFFLOAD_", extra="ignore")

    repository: Path = Field(
        default=Path("model-repository"),
        description="Triton-layout model repository: <dir>/<name>/<version>/model.onnx",
    )
    host: str = Field(
        default="127.0.0.1",
        description="address the gRPC, HTTP and metrics servers bind (0.0.0.0 = every interface)",
    )
    grpc_port: int = Field(default=8001, ge=0, le=65535, description="gRPC port (0 = pick free)")
    http_port: int = Field(
        default=8000,
        ge=-1,
        le=65535,
        description="KServe V2 HTTP/REST port, also /healthz and /readyz (0 = free, -1 = off)",
    )
    metrics_port: int = Field(
        default=8002, ge=-1, le=65535, description="Prometheus /metrics port (0 = free, -1 = off)"
    )
    backend: Literal["auto", "onnxruntime", "tensorrt"] = Field(
        default="auto", description="inference backend; auto prefers TensorRT, then ORT CUDA/CPU"
    )
    max_batch: int = Field(
        default=64, ge=1, description="upper bound on rows per batch (a model may set less)"
    )
    max_queue_delay_us: int = Field(
        default=0,
        ge=0,
        description="how long the batcher may hold the first request waiting for a fuller batch",
    )
    max_queue: int = Field(
        default=4096,
        ge=1,
        description="requests queued per model version before RESOURCE_EXHAUSTED",
    )
    workers: int = Field(
        default=2, ge=1, description="inference threads; also concurrent batches per model version"
    )
    processes: Annotated[int, Field(ge=1)] | Literal["auto"] = Field(
        default=1,
        description="server processes sharing the gRPC and HTTP ports (SO_REUSEPORT), each "
        "with its own batcher and models, under one supervisor that owns /metrics; auto = "
        "the CPUs this process may use (affinity, capped by a cgroup CPU limit); 1 = one "
        "process, no supervisor",
    )
    inline_max_us: int = Field(
        default=200,
        ge=0,
        le=100_000,
        description="run a batch on the event loop instead of a worker thread when no other "
        "batch is running and the model's measured batch time is at most this (0 = never)",
    )
    intra_op_threads: int = Field(default=1, ge=1, description="ONNX Runtime threads per batch")
    max_message_bytes: int = Field(
        default=8 * 1024 * 1024,
        ge=1024,
        description="largest gRPC message or HTTP body accepted or sent (a batch of 256 "
        "sensor windows of 100 x 6 FP32 is 0.6 MiB)",
    )
    max_inflight_bytes: int = Field(
        default=128 * 1024 * 1024,
        ge=1024,
        description="inference request bytes admitted at once; beyond it RESOURCE_EXHAUSTED",
    )
    http2_window_bytes: int = Field(
        default=4 * 1024 * 1024,
        ge=0,
        le=2**31 - 1,  # HTTP/2's largest window
        description="fixed HTTP/2 receive window per gRPC connection and per stream (0 = "
        "gRPC's BDP probing, whose window grows by timing: a burst of oversized requests "
        "then costs up to hundreds of MiB before its length check); 4 MiB keeps a 50 ms "
        "RTT link at about 80 MiB/s",
    )
    max_stream_pending: int = Field(
        default=256,
        ge=1,
        description="requests in progress per ModelStreamInfer stream before reading pauses",
    )
    grace_s: float = Field(
        default=10.0, ge=0, description="on SIGTERM, how long in-flight requests may finish"
    )
    tls_cert: Path | None = Field(default=None, description="server certificate (PEM)")
    tls_key: Path | None = Field(default=None, description="server private key (PEM)")
    tls_ca: Path | None = Field(
        default=None, description="CA of client certificates; setting it requires mutual TLS"
    )
    admin_token_file: Path | None = Field(
        default=None,
        description="file of admin bearer tokens (one per line) allowed to load/unload models",
    )
    admin_subjects: str = Field(
        default="",
        description="comma-separated client-certificate common names allowed to load/unload "
        "models (needs mutual TLS)",
    )
    otlp_endpoint: str | None = Field(
        default=None,
        description="OpenTelemetry collector (OTLP/HTTP, e.g. http://127.0.0.1:4318): a span per "
        "inference whose caller sent a W3C traceparent (off when unset)",
    )
    log_level: LogLevel = Field(default="INFO", description=LOG_LEVEL_HELP)
    log_format: LogFormat = Field(default="text", description=LOG_FORMAT_HELP)

    @field_validator("http2_window_bytes")
    @classmethod
    def _window_not_below_http2_default(cls, v: int) -> int:
        # A window below HTTP/2's initial 65,535 bytes would throttle every large call
        # to a trickle per round trip; there is no use for it.
        if 0 < v < 65_535:
            raise ValueError("must be 0 (gRPC's BDP probing) or at least 65535 bytes")
        return v

    def process_count(self) -> int:
        """``processes`` as a number (``auto`` resolved on this machine, at least 1)."""
        if self.processes != "auto":
            return self.processes
        cpus = len(os.sched_getaffinity(0))
        limit = _cgroup_cpu_limit()
        return max(1, cpus if limit is None else min(cpus, limit))


def _cgroup_cpu_limit() -> int | None:
    """CPUs a cgroup v2 quota allows (``cpu.max``, rounded up), None when unlimited.

    Kubernetes CPU limits are a CFS quota, not an affinity mask: without this, ``auto`` in
    a 4-CPU pod on a 64-core node would start 64 processes sharing 4 CPUs of time.
    """
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
    except (OSError, ValueError):
        return None
    if quota == "max":
        return None
    return max(1, math.ceil(int(quota) / int(period)))
