"""TLS and mutual TLS credentials for both ends of the offload channel.

Server: ``cert`` + ``key`` enable TLS; adding ``ca`` requires clients to present a
certificate signed by that CA (mutual TLS). Client: ``ca`` verifies the server; ``cert`` +
``key`` are its own identity for mutual TLS.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import grpc

from models.errors import ConfigError


@dataclass(frozen=True)
class TlsFiles:
    """Paths of PEM files; any may be None (meaning: not used)."""

    cert: Path | None = None
    key: Path | None = None
    ca: Path | None = None


def _read(path: Path | None, what: str) -> bytes | None:
    if path is None:
        return None
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read TLS {what} {path}: {exc}") from exc


def server_credentials(tls: TlsFiles) -> grpc.ServerCredentials | None:
    """None when TLS is off (no cert); mutual TLS when a CA is given."""
    if tls.cert is None and tls.key is None:
        if tls.ca is not None:
            raise ConfigError("--tls-ca needs --tls-cert and --tls-key")
        return None
    if tls.cert is None or tls.key is None:
        raise ConfigError("TLS needs both --tls-cert and --tls-key")
    key, cert = _read(tls.key, "key"), _read(tls.cert, "certificate")
    ca = _read(tls.ca, "CA")
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=ca, require_client_auth=ca is not None
    )


def channel_credentials(tls: TlsFiles) -> grpc.ChannelCredentials:
    if (tls.cert is None) != (tls.key is None):
        raise ConfigError("a client certificate needs both cert and key")
    return grpc.ssl_channel_credentials(
        root_certificates=_read(tls.ca, "CA"),
        private_key=_read(tls.key, "key"),
        certificate_chain=_read(tls.cert, "certificate"),
    )
