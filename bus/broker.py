"""Shared paho-mqtt plumbing for the agent, the gateway and the simulators.

Why this exists: paho does not set TCP_NODELAY, and without it small QoS-0 publishes
sit in Nagle's buffer for up to 40 ms. Every client in the project is made here so
that the socket option, TLS, credentials and reconnect backoff are the same everywhere.
"""

from __future__ import annotations

import contextlib
import random
import socket
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, TypeVar, overload
from urllib.parse import unquote, urlsplit

import paho.mqtt.client as mqtt

from models.errors import ConfigError

C = TypeVar("C", bound=mqtt.Client)


@dataclass(frozen=True, slots=True)
class BrokerUrl:
    """``mqtt://user:pass@host:1883`` or ``mqtts://host:8883`` parsed and validated."""

    host: str
    port: int
    tls: bool
    username: str | None = None
    password: str | None = None

    @classmethod
    def parse(cls, url: str) -> BrokerUrl:
        parts = urlsplit(url)
        if parts.scheme not in ("mqtt", "mqtts", "tcp", "ssl"):
            raise ConfigError(f"broker URL must start with mqtt:// or mqtts://, got {url!r}")
        if not parts.hostname:
            raise ConfigError(f"broker URL has no host: {url!r}")
        tls = parts.scheme in ("mqtts", "ssl")
        try:
            port = parts.port or (8883 if tls else 1883)
        except ValueError as exc:
            raise ConfigError(f"bad port in broker URL {url!r}") from exc
        return cls(
            host=parts.hostname,
            port=port,
            tls=tls,
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
        )

    def __str__(self) -> str:  # never print the password
        auth = f"{self.username}@" if self.username else ""
        return f"{'mqtts' if self.tls else 'mqtt'}://{auth}{self.host}:{self.port}"


def _set_nodelay(client: mqtt.Client, userdata: object, sock: Any) -> None:
    # Not a TCP socket (e.g. a websockets proxy): nothing to tune.
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


@overload
def make_client(
    url: BrokerUrl,
    client_id: str,
    *,
    clean_session: bool = ...,
    ca_file: str | None = ...,
    cert_file: str | None = ...,
    key_file: str | None = ...,
    max_inflight: int = ...,
    max_queued: int = ...,
) -> mqtt.Client: ...


@overload
def make_client(
    url: BrokerUrl,
    client_id: str,
    *,
    clean_session: bool = ...,
    ca_file: str | None = ...,
    cert_file: str | None = ...,
    key_file: str | None = ...,
    max_inflight: int = ...,
    max_queued: int = ...,
    client_class: type[C],
) -> C: ...


def make_client(
    url: BrokerUrl,
    client_id: str,
    *,
    clean_session: bool = True,
    ca_file: str | None = None,
    cert_file: str | None = None,
    key_file: str | None = None,
    max_inflight: int = 1000,
    max_queued: int = 0,
    client_class: type[mqtt.Client] = mqtt.Client,
) -> mqtt.Client:
    """A paho MQTT 3.1.1 client with TCP_NODELAY, TLS and credentials applied; the one
    way every process builds one (``client_class``: a subclass, e.g. the agent's
    :class:`bus.fast_client.FastClient`).

    ``clean_session=False`` gives a persistent session: QoS-1 messages published while
    the client is away are delivered when it reconnects with the same ``client_id``.
    """
    client = client_class(
        mqtt.CallbackAPIVersion.VERSION2,
        client_id=client_id,
        clean_session=clean_session,
        protocol=mqtt.MQTTv311,
    )
    client.on_socket_open = _set_nodelay
    client.max_inflight_messages_set(max_inflight)
    client.max_queued_messages_set(max_queued)
    client.reconnect_delay_set(min_delay=1, max_delay=30)
    if url.username:
        client.username_pw_set(url.username, url.password)
    if url.tls:
        ctx = ssl.create_default_context(cafile=ca_file)
        if cert_file:
            ctx.load_cert_chain(cert_file, key_file)
        client.tls_set_context(ctx)
    return client


def backoff_delays(base: float = 0.5, cap: float = 30.0) -> Iterator[float]:
    """Full-jitter exponential backoff (AWS architecture blog): spreads reconnect storms."""
    attempt = 0
    while True:
        yield random.uniform(0, min(cap, base * (2**attempt)))
        attempt += 1
