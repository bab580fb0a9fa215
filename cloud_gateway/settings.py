"""``GatewaySettings``: every knob of ``cloud-gateway``, from env (``GATEWAY_``), secrets or flags.

Each CLI flag ``--foo-bar`` maps 1:1 to the field ``foo_bar`` (env ``GATEWAY_FOO_BAR``);
flags override the environment. Nothing is read at import time.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from bus.topics import Topics
from shell.logs import LOG_FORMAT_HELP, LOG_LEVEL_HELP, LogFormat, LogLevel


class GatewaySettings(BaseSettings):
    """Configuration of one ``cloud-gateway`` process (server and client subcommands)."""

    model_config = SettingsConfigDict(env_prefix="GATEWAY_", extra="ignore", secrets_dir=None)

    host: str = Field(default="127.0.0.1", description="Address the REST API listens on.")
    port: int = Field(default=8600, ge=0, le=65535, description="Port of the REST API (0: any).")
    public_url: str | None = Field(
        default=None,
        description="Base URL agents use to download bundles (default: http://HOST:PORT).",
    )
    db_path: Path = Field(
        default=Path("gateway.sqlite"), description="SQLite file for registry, fleet, rollouts."
    )
    database_url: str | None = Field(
        default=None,
        description="sqlite:///PATH (one replica; default: sqlite:///DB_PATH) or "
        "postgresql://USER@HOST:PORT/DB (several replicas: one leads the rollouts). "
        "A password belongs in GATEWAY_DATABASE_URL or ~/.pgpass, not on a command line.",
    )
    blob_dir: Path = Field(
        default=Path("gateway-blobs"),
        description="Directory of bundle files (by sha256); replicas share it (a "
        "ReadWriteMany volume).",
    )
    broker: str = Field(
        default="mqtt://127.0.0.1:1883", description="MQTT broker URL (mqtt:// or mqtts://)."
    )
    mqtt_ca_file: str | None = Field(default=None, description="CA bundle for mqtts:// brokers.")
    mqtt_share_group: str | None = Field(
        default=None,
        description="Subscribe to heartbeats as $share/GROUP/...: replicas split them "
        "instead of each ingesting all (every replica still publishes desired state).",
    )
    topic_prefix: str = Field(
        default="", description="Prefix prepended to the fleet topic root (multi-tenant brokers)."
    )
    cloud: str | None = Field(
        default=None,
        description="Cloud inference tier HOST:PORT; rolled-out versions are loaded there too.",
    )
    cloud_repository: Path | None = Field(
        default=None,
        description="Model repository the cloud tier serves (shared volume); versions are "
        "installed there before the load RPC.",
    )
    cloud_tls_ca: Path | None = Field(
        default=None,
        description="CA (PEM) that signed the cloud tier's server certificate; turns on TLS.",
    )
    cloud_tls_cert: Path | None = Field(
        default=None,
        description="Client certificate (PEM) for mutual TLS with the cloud tier; its CN must "
        "be in the server's --admin-subjects to load models.",
    )
    cloud_tls_key: Path | None = Field(
        default=None, description="Private key (PEM) of --cloud-tls-cert."
    )
    cloud_admin_token_file: Path | None = Field(
        default=None,
        description="File whose first line is a bearer token of the cloud tier's "
        "--admin-token-file (sent on model load).",
    )
    trusted_keys: Path | None = Field(
        default=None, description="Ed25519 public key file or directory of *.pub signer keys."
    )
    tokens_file: Path | None = Field(
        default=None,
        description="Token file: one 'ROLE TOKEN' or 'ROLE sha256:HEX' per line (# comments).",
    )
    admin_token: SecretStr | None = Field(default=None, description="An admin bearer token.")
    agent_token: SecretStr | None = Field(default=None, description="An agent bearer token.")
    viewer_token: SecretStr | None = Field(default=None, description="A viewer bearer token.")
    desired_signing_key: Path | None = Field(
        default=None,
        description="Ed25519 key signing every desired-state message, created with its .pub "
        "when missing (default: desired.key beside --db-path); agents trust the .pub via "
        "--gateway-key.",
    )
    require_enrolment: bool | None = Field(
        default=None,
        description="Accept status only from enrolled agent ids (default: on as soon as any "
        "agent is enrolled).",
    )
    heartbeat_timeout_s: float = Field(
        default=15.0, gt=0, description="Agents silent this long are marked offline."
    )
    tick_s: float = Field(
        default=0.5, gt=0, description="Period of the rollout engine and offline sweep."
    )
    wave_timeout_s: float = Field(
        default=300.0, gt=0, description="Default time a canary wave may take to converge."
    )
    max_bundle_bytes: int = Field(
        default=256 * 1024 * 1024, gt=0, description="Largest accepted bundle upload."
    )
    log_level: LogLevel = Field(default="INFO", description=LOG_LEVEL_HELP)
    log_format: LogFormat = Field(default="text", description=LOG_FORMAT_HELP)
    url: str = Field(
        default="http://127.0.0.1:8600", description="Gateway URL for client subcommands."
    )
    token: SecretStr | None = Field(
        default=None, description="Bearer token for client subcommands."
    )

    def topics(self) -> Topics:
        prefix = self.topic_prefix.strip("/")
        return Topics(fleet=f"{prefix}/fleet") if prefix else Topics()

    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.db_path}"

    def signing_key_path(self) -> Path:
        return self.desired_signing_key or self.db_path.parent / "desired.key"

    def base_url(self, bound_port: int | None = None) -> str:
        if self.public_url:
            return self.public_url.rstrip("/")
        return f"http://{self.host}:{bound_port or self.port}"
