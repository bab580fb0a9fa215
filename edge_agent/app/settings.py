"""``EdgeSettings``: every knob of the edge agent, from env (``EDGE_``), secrets or CLI flags.

Each CLI flag ``--foo-bar`` maps 1:1 to the field ``foo_bar`` (env ``EDGE_FOO_BAR``);
flags override the environment. Nothing is read at import time.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from bus.topics import check_segment
from edge_agent.ingest.bindings import Binding
from models.errors import EdgecloudError, InvalidInput
from shell.logs import LOG_FORMAT_HELP, LOG_LEVEL_HELP, LogFormat, LogLevel


def _default_agent_id() -> str:
    host = "".join(ch if ch.isalnum() or ch in "-_." else "-" for ch in socket.gethostname())
    return f"edge-{host[:40] or 'node'}"


class EdgeSettings(BaseSettings):
    """Configuration of one ``edge-agent`` process.

    Kubernetes secrets: pass ``_secrets_dir=...`` (the CLI reads ``EDGE_SECRETS_DIR``);
    each file there holds one value, named like the env variable (e.g. ``edge_broker``).
    """

    model_config = SettingsConfigDict(env_prefix="EDGE_", extra="ignore", secrets_dir=None)

    agent_id: str = Field(
        default_factory=_default_agent_id,
        description="Stable agent id; also the MQTT client id of the persistent session.",
    )
    site: str = Field(default="site-1", description="Site this node belongs to.")
    broker: str = Field(
        default="mqtt://127.0.0.1:1883",
        description="Broker URL, mqtt:// or mqtts://, user:password@ allowed.",
    )
    mqtt_ca_file: str | None = Field(default=None, description="CA bundle for mqtts:// brokers.")
    mqtt_cert_file: str | None = Field(default=None, description="Client certificate (mqtts).")
    mqtt_key_file: str | None = Field(default=None, description="Client key (mqtts).")
    mqtt_password_file: str | None = Field(
        default=None,
        description="File holding this agent's MQTT password (its enrolment token, `cloud-gateway "
        "fleet enrol`), used when --broker has no password; the user is the broker URL's, else "
        "the agent id. Keeps per-node credentials out of a shared broker URL.",
    )
    topics_filter: str = Field(
        default="sensors/+/+/+",
        description="Comma-separated MQTT topic filters for readings.",
    )
    share_group: str | None = Field(
        default=None,
        description="Shared-subscription group: replicas with the same group split the streams.",
    )
    topic_prefix: str = Field(
        default="",
        description="Prefix prepended to every outgoing topic root (results, alerts, fleet, ...).",
    )
    clean_session: bool = Field(
        default=False,
        description="False keeps a persistent session so QoS-1 readings survive agent restarts.",
    )
    qos: int = Field(default=1, ge=0, le=1, description="Subscription QoS for readings.")
    repository: Path = Field(
        default=Path("models-repo"), description="Model repository root (Triton layout)."
    )
    model: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Model to serve: NAME[:VERSION][=TOPIC_FILTER], repeatable (environment: "
        "comma-separated). A model with a filter answers the readings that filter matches; "
        "the one without takes what no filter matches. None: the agent starts empty and "
        "serves what the gateway's desired state assigns.",
    )
    hop: int | None = Field(
        default=None, ge=1, description="Override the manifest's hop (samples between windows)."
    )
    backend: Literal["auto", "onnxruntime", "tensorrt"] = Field(
        default="auto", description="Inference backend kind."
    )
    intra_op_threads: int = Field(default=1, ge=1, description="ORT threads per inference call.")
    engine_cache_dir: Path | None = Field(
        default=None,
        description="TensorRT engine cache (TensorRT backend or ORT's TensorRT provider).",
    )
    fp16: bool = Field(default=False, description="Build TensorRT engines in FP16 where supported.")
    emulate_ms_per_batch: float = Field(
        default=0.0,
        ge=0,
        description="Simulation only: extra service time per local batch, emulating a slower "
        "device (fleet-sim); 0 disables.",
    )
    emulate_ms_per_item: float = Field(
        default=0.0,
        ge=0,
        description="Simulation only: extra service time per window in a local batch; 0 disables.",
    )
    cloud: str | None = Field(
        default=None,
        description="Offload target HOST:PORT (optional); several replicas as a comma-separated "
        "list, and a DNS name (a headless Service) is expanded to every address it resolves "
        "to, re-resolved every 5 s. Calls spread over the replicas and fail over between them.",
    )
    cloud_model: str | None = Field(
        default=None,
        description="Model on the cloud tier that answers offloaded batches: NAME (every "
        "local model) or LOCAL=CLOUD,... per model (default: the local model's own name).",
    )
    cloud_rtt_prior_ms: float = Field(
        default=50.0,
        ge=0,
        description="Cloud round trip assumed by the routing policy until it is measured "
        "(an unmeasured cloud must not look instant); probes measure it at startup.",
    )
    cloud_rtt_min_samples: int = Field(
        default=3,
        ge=0,
        description="Successful cloud calls before the measured RTT replaces the prior "
        "(blended in between).",
    )
    cloud_rtt_refresh_s: float = Field(
        default=1.0,
        ge=0.0,
        description="Probe the cloud once when no call succeeded for this long, so an RTT "
        "measured in a bad moment cannot keep the policy away from the cloud forever "
        "(0: probe only until measured).",
    )
    tls_ca: str | None = Field(default=None, description="CA for gRPC TLS to the cloud tier.")
    tls_cert: str | None = Field(default=None, description="Client cert for gRPC mTLS.")
    tls_key: str | None = Field(default=None, description="Client key for gRPC mTLS.")
    policy: Literal["local-only", "cloud-only", "threshold", "slo-aware", "cascade"] = Field(
        default="slo-aware", description="Routing policy."
    )
    pressure_limit: float = Field(
        default=0.9,
        ge=0.0,
        description="slo-aware and cascade policies: node pressure (0..1, from CPU/GPU load "
        "and temperature) at or above which a batch goes to the cloud even when the device "
        "would make its deadline; above 1 never (e.g. a node shared with other work).",
    )
    cascade_min_confidence: float = Field(
        default=0.8,
        ge=0.0,
        description="Cascade policy: rows of a local classifier batch whose top probability "
        "is below this are re-asked of the cloud model (--cloud-model) when it can still "
        "answer in time; above 1 escalates every row, 0 none.",
    )
    offload_max_rps: float | None = Field(
        default=None, description="Offload budget in requests/s (None: unlimited)."
    )
    slo_ms: float | None = Field(
        default=None, gt=0, description="Latency SLO per request; default from the manifest."
    )
    deadline_from: Literal["sensor", "arrival"] = Field(
        default="sensor",
        description="Where a request's latency clock starts: the sensor ts of the window's "
        "last reading (what users see, backlog included) or the agent's arrival time.",
    )
    max_clock_skew_s: float = Field(
        default=300.0,
        gt=0,
        description="A reading whose sensor ts is further than this from our clock (either "
        "way) is taken as clock skew, timed from arrival, and counted as clock_skew.",
    )
    max_batch: int = Field(default=64, ge=1, description="Largest micro-batch.")
    max_wait_ms: float = Field(default=2.0, ge=0, description="Longest a request waits to batch.")
    workers: int = Field(default=1, ge=1, description="Local inference executor threads.")
    inline_max_ms: float = Field(
        default=2.0,
        ge=0,
        description="Run a local batch on the MQTT thread when its estimated compute is below "
        "this (saves thread hand-offs for cheap models); 0 always uses the executor.",
    )
    remote_concurrency: int = Field(default=32, ge=1, description="Concurrent offload calls.")
    max_payload_bytes: int = Field(default=65536, ge=64, description="Larger payloads rejected.")
    max_streams: int = Field(
        default=10000,
        ge=1,
        description="Sensor streams tracked per model; when full, streams idle for "
        "--stream-idle-s are evicted, else the new stream's reading is dead-lettered.",
    )
    stream_idle_s: float = Field(
        default=300.0, gt=0, description="A stream without readings this long may be evicted."
    )
    reorder_ms: float = Field(
        default=500.0,
        ge=0,
        description="An acknowledged (QoS>=1) reading that arrives ahead of missing ones is "
        "held up to this long for them (brokers can redeliver a session's messages out of "
        "order); 0 opens the gap at once. Windows after a real QoS-1 gap wait this long.",
    )
    http_host: str = Field(default="127.0.0.1", description="HTTP bind address.")
    http_port: int = Field(default=8080, ge=0, le=65535, description="HTTP port (0: any free).")
    heartbeat_s: float = Field(default=5.0, gt=0, description="Heartbeat period.")
    db_path: Path | None = Field(default=None, description="SQLite store file (None: no store).")
    state_path: Path | None = Field(
        default=None,
        description="Where open windows are saved on shutdown (default: next to --db-path).",
    )
    journal: bool = Field(
        default=True,
        description="Journal QoS>=1 readings before they are acknowledged, so that a crash "
        "(kill -9) loses none; needs --journal-dir or --db-path.",
    )
    journal_dir: Path | None = Field(
        default=None, description="Write-ahead journal directory (default: next to --db-path)."
    )
    journal_compact_s: float = Field(
        default=30.0, gt=0, description="Start a compacted journal segment this often."
    )
    journal_segment_mb: float = Field(
        default=16.0, gt=0, description="Start a compacted journal segment at this size."
    )
    journal_fsync: bool = Field(
        default=False,
        description="fsync every journal record: also survives power loss, at the cost of a "
        "disk flush per QoS-1 reading (the page cache already survives a process crash).",
    )
    retention_hours: float = Field(default=24.0, gt=0, description="Keep results this long.")
    retention_mb: float = Field(default=200.0, gt=0, description="Max store size before pruning.")
    uplink: Literal["off", "alerts", "results"] = Field(
        default="alerts",
        description="What goes to the cloud uplink queue (uplink/{agent}, kept on disk).",
    )
    anomaly_threshold: float | None = Field(
        default=None, description="Override the manifest's anomaly threshold."
    )
    gateway_url: str | None = Field(default=None, description="Cloud gateway base URL.")
    gateway_token_file: str | None = Field(
        default=None, description="File holding the agent's gateway bearer token."
    )
    trusted_keys: str | None = Field(
        default=None, description="Public key file or directory trusted to sign bundles."
    )
    gateway_key: str | None = Field(
        default=None,
        description="The gateway's desired-state public key (.pub, or a directory of them): "
        "desired state not signed by it is refused.",
    )
    otlp_endpoint: str | None = Field(
        default=None,
        description="OpenTelemetry collector (OTLP/HTTP, e.g. http://127.0.0.1:4318): trace "
        "sampled requests from the sensor through the offload call (off when unset).",
    )
    trace_sample_ratio: float = Field(
        default=0.01, ge=0.0, le=1.0, description="Share of requests traced (with --otlp-endpoint)."
    )
    log_level: LogLevel = Field(default="INFO", description=LOG_LEVEL_HELP)
    log_format: LogFormat = Field(default="text", description=LOG_FORMAT_HELP)

    @field_validator("agent_id", "site")
    @classmethod
    def _segment(cls, v: str) -> str:
        try:
            check_segment(v, "id")
        except InvalidInput as exc:  # pydantic reports ValueErrors with the field name
            raise ValueError(exc.message) from None
        return v

    @field_validator("model", mode="before")
    @classmethod
    def _models(cls, v: Any) -> Any:
        # One string (an env variable, a single flag): comma-separated bindings.
        if isinstance(v, str):
            return [part.strip() for part in v.split(",") if part.strip()]
        return v

    @field_validator("model")
    @classmethod
    def _check_models(cls, v: list[str]) -> list[str]:
        try:
            names = [Binding.parse(b).name for b in v]
        except EdgecloudError as exc:  # pydantic reports ValueErrors with the field name
            raise ValueError(exc.message) from None
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"model {sorted(dup)[0]!r} is given twice")
        return v

    def bindings(self) -> list[Binding]:
        """``--model`` entries parsed (name, pinned version, topic filter)."""
        return [Binding.parse(b) for b in self.model]

    def cloud_model_for(self, local: str) -> str | None:
        """The cloud model for local model ``local`` (None: the same name)."""
        spec = self.cloud_model
        if not spec:
            return None
        if "=" not in spec:
            return spec.strip()
        for part in spec.split(","):
            name, _, cloud = part.partition("=")
            if name.strip() == local:
                return cloud.strip() or None
        return None

    def stream_state_path(self) -> Path | None:
        if self.state_path is not None:
            return self.state_path
        return self.db_path.with_suffix(".streams.npz") if self.db_path is not None else None

    def journal_path(self) -> Path | None:
        if not self.journal:
            return None
        if self.journal_dir is not None:
            return self.journal_dir
        return self.db_path.with_suffix(".journal") if self.db_path is not None else None

    def filters(self) -> list[str]:
        return [f.strip() for f in self.topics_filter.split(",") if f.strip()]
