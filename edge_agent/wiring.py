"""Builders for the agent's parts: topics, offload client, dispatcher, RTT probes, updater,
journal."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edge_agent.dispatch import Dispatcher
from edge_agent.journal import Journal
from edge_agent.remote_rtt import RemoteRtt
from edge_agent.settings import EdgeSettings
from edge_agent.updater import ModelUpdater, SlotTarget
from models.errors import ConfigError, EdgecloudError
from models.repository import ModelRepository
from offload.policy import OffloadBudget, ServiceTimeModel, make_policy
from offload.topics import Topics

if TYPE_CHECKING:
    from edge_agent.agent import EdgeAgent

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
    """The offload client for ``--cloud`` (None without one); started by the agent."""
    if not s.cloud:
        return None
    from offload.client import OffloadClient
    from offload.tls import TlsFiles

    tls = None
    if s.tls_ca or s.tls_cert:
        tls = TlsFiles(
            cert=Path(s.tls_cert) if s.tls_cert else None,
            key=Path(s.tls_key) if s.tls_key else None,
            ca=Path(s.tls_ca) if s.tls_ca else None,
        )
    return OffloadClient(s.cloud, tls=tls)


def policy_params(s: EdgeSettings) -> dict[str, Any]:
    """Settings that parameterise the chosen policy (``make_policy`` keyword arguments)."""
    if s.policy == "cascade":
        return {"min_confidence": s.cascade_min_confidence, "pressure_limit": s.pressure_limit}
    if s.policy == "slo-aware":
        return {"pressure_limit": s.pressure_limit}
    return {}


def make_dispatcher(agent: EdgeAgent) -> Dispatcher:
    s = agent.settings
    budget = OffloadBudget(s.offload_max_rps, None, time.monotonic) if s.offload_max_rps else None
    cloud_model = s.cloud_model

    def remote_model() -> tuple[str, int | None]:
        # Same name and version on the cloud tier unless --cloud-model names a bigger one.
        manifest, _ = agent.models.active
        return (cloud_model, None) if cloud_model else (manifest.name, manifest.version)

    return Dispatcher(
        agent.models,
        agent.executor,
        agent.core.complete,
        max_batch=s.max_batch,
        max_wait_s=s.max_wait_ms / 1000.0,
        workers=s.workers,
        policy=make_policy(s.policy, **policy_params(s)),
        service=ServiceTimeModel(),
        remote=agent.remote,
        remote_model=remote_model,
        budget=budget,
        remote_concurrency=s.remote_concurrency,
        inline_max_s=s.inline_max_ms / 1000.0,
        pressure=lambda: agent.telemetry.node_pressure,
        remote_rtt=RemoteRtt(s.cloud_rtt_prior_ms / 1000.0, s.cloud_rtt_min_samples),
        on_escalation=agent.stats.record_escalation,
    )


async def probe_cloud(agent: EdgeAgent) -> None:
    """Measure the cloud's round trip with single zero windows until the prior is unneeded."""
    d = agent.dispatcher
    remote = d.remote
    if remote is None:
        return

    async def call(deadline: float) -> object:
        manifest, _ = agent.models.active
        name, version = d.remote_target(manifest)
        spec = manifest.inputs[0]
        x = np.zeros([1, *(max(1, n) for n in spec.shape[1:])], dtype=np.float32)
        return await remote.infer(name, version, {spec.name: x}, deadline)

    await d.rtt.probe(
        call, lambda: bool(remote.available), refresh_s=agent.settings.cloud_rtt_refresh_s
    )


def make_updater(agent: EdgeAgent) -> ModelUpdater:
    """The updater fed by ``fleet/{agent}/desired`` and ``fleet/{site}/desired``."""
    s = agent.settings
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
    # The agent side of ModelTarget; an agent with several models passes its own.
    target = getattr(agent, "model_target", None) or SlotTarget(agent.models)
    return ModelUpdater(
        s.agent_id,
        s.site,
        ModelRepository(s.repository, check=False),
        target,
        token,
        keys,
        agent.update_report,
        gateway_url=s.gateway_url,
        gateway_keys=gateway_keys,
        sequence_file=Path(s.repository) / ".desired-sequence.json",
    )


def open_journal(agent: EdgeAgent) -> Journal | None:
    """Open the crash journal (None when disabled) and replay what a crashed run
    acknowledged, before the broker sends anything new."""
    s = agent.settings
    where = s.journal_path()
    if where is None:
        return None
    journal = Journal(
        where,
        segment_bytes=int(s.journal_segment_mb * 2**20),
        compact_s=s.journal_compact_s,
        fsync=s.journal_fsync,
        connected=lambda: agent.broker_connected,
    )
    report = journal.open(agent.core)
    agent.core.journal = journal
    if report["unclean"]:
        log.warning("unclean stop before; journal %s replayed: %s", where, report)
    return journal
