"""What the HTTP side sees of a running gateway: a typed protocol, so routes, handlers,
health and the app factory depend on the gateway's parts and never on the module that
builds them (:mod:`cloud_gateway.service`, which imports the app: that would be a cycle).
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

from cloud_gateway.auth import TokenStore
from cloud_gateway.bus import Bus
from cloud_gateway.config import ConfigTwins
from cloud_gateway.db import Database
from cloud_gateway.fleet import Fleet
from cloud_gateway.leader import Leadership
from cloud_gateway.metrics import GatewayMetrics
from cloud_gateway.registry import Registry
from cloud_gateway.rollouts import RolloutEngine
from cloud_gateway.settings import GatewaySettings


class Gateway(Protocol):
    """A running gateway (``cloud_gateway.service.Gateway``), as its API uses it."""

    settings: GatewaySettings
    db: Database
    leadership: Leadership
    tokens: TokenStore
    registry: Registry
    fleet: Fleet
    engine: RolloutEngine
    config: ConfigTwins
    metrics: GatewayMetrics
    bus: Bus | None
    engine_task: asyncio.Task[None] | None

    def kick(self) -> None:
        """Run the rollout engine now rather than at its next tick."""

    def openapi(self) -> dict[str, Any]: ...

    def bundle_url(self, name: str, version: int) -> str: ...
