"""Builders for the agent's shared parts from its settings: topics, offload client, updater."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bus.topics import Topics
from edge_agent.app.settings import EdgeSettings
from edge_agent.model.updater import ModelTarget, ModelUpdater
from models.errors import ConfigError, EdgecloudError
from models.repository import ModelRepository

log = logging.getLogger(__name__)


def make_topics(prefix: str) -> Topics:
    p = f"{prefix.rstrip('/')}/" if prefix else ""
    return Topics(
        sensors=f"{p}sensors",
        results=f"{p}results",
        alerts=f"{p}alerts",
        deadletter=f"{p}deadletter",
        fleet=f"{p}fleet",
        uplink=f"{p}uplink",
    )


def make_remote(s: EdgeSettings) -> Any:
    """The offload client for ``--cloud`` (None without one); started by the agent.

    One IP-literal target keeps the plain client; a list of targets or a DNS name (a
    headless Service naming every replica) gets the replica set (offload/replicas.py).
    """
    if not s.cloud:
        return None
    from offload.client import OffloadClient
    from offload.replicas import ReplicaClient, parse_targets
    from offload.tls import TlsFiles

    tls = None
    if s.tls_ca or s.tls_cert:
        tls = TlsFiles(
            cert=Path(s.tls_cert) if s.tls_cert else None,
            key=Path(s.tls_key) if s.tls_key else None,
            ca=Path(s.tls_ca) if s.tls_ca else None,
        )
    targets = parse_targets(s.cloud)
    if len(targets) == 1 and targets[0].literal:
        return OffloadClient(str(targets[0]), tls=tls)
    return ReplicaClient(s.cloud, tls=tls)


def make_updater(
    s: EdgeSettings, target: ModelTarget, report: Callable[[dict[str, Any]], None]
) -> ModelUpdater:
    """The updater fed by ``fleet/{agent}/desired`` and ``fleet/{site}/desired``."""
    try:
        token = Path(s.gateway_token_file).read_text().strip() if s.gateway_token_file else None
    except OSError as exc:
        raise ConfigError(f"cannot read --gateway-token-file: {exc}") from exc
    from models.signing import load_trusted_keys

    keys: dict[str, Any] = dict(load_trusted_keys(s.trusted_keys)) if s.trusted_keys else {}
    gateway_keys: dict[str, Any] = {}
    try:
        gateway_keys = dict(load_trusted_keys(s.gateway_key)) if s.gateway_key else {}
    except EdgecloudError as exc:
        # Serving must not depend on the update channel: start, refuse every update.
        log.error("cannot load --gateway-key: %s", exc.message)
    if not gateway_keys and (s.gateway_url or s.gateway_key):
        log.error("no usable --gateway-key: every desired-state message will be refused")
    return ModelUpdater(
        s.agent_id,
        s.site,
        ModelRepository(s.repository, check=False),
        target,
        token,
        keys,
        report,
        gateway_url=s.gateway_url,
        gateway_keys=gateway_keys,
        sequence_file=Path(s.repository) / ".desired-sequence.json",
    )
