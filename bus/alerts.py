"""The alert message on ``alerts/{site}/{device}`` (QoS 1): the typed contract.

Produced by the agent (``edge_agent.output.alerts`` holds the firing/resolved rules);
consumed by ``simulators.alert_bridge`` (to Alertmanager) and any router. Besides
``ts, site, device, stream, kind, detail, seq, agent`` every alert carries what a router
needs to deduplicate: ``key`` (stable per condition, ``{kind}:{site}/{device}/{stream}``),
``severity`` (``info`` for a class change, ``warning`` for an anomaly), ``state``
(``firing``/``resolved``) and ``starts_at`` (when the condition began).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Severity = Literal["info", "warning", "critical"]
State = Literal["firing", "resolved"]
Kind = Literal["class-change", "anomaly"]
SEVERITY: dict[str, Severity] = {"class-change": "info", "anomaly": "warning"}


class Alert(BaseModel):
    """One message on ``alerts/{site}/{device}`` (JSON; unknown fields kept when parsing)."""

    model_config = ConfigDict(extra="allow")

    ts: float = Field(description="when the agent raised it, Unix seconds")
    site: str
    device: str
    stream: str
    kind: Kind
    detail: str | None = Field(default=None, description="human text, e.g. 'Standing -> Running'")
    seq: int = Field(description="sequence number of the window's last reading")
    agent: str = Field(description="the agent that raised it")
    key: str = Field(description="stable per condition: {kind}:{site}/{device}/{stream}")
    severity: Severity
    state: State
    starts_at: float = Field(description="when the condition began (equals ts when firing)")
    value: float | None = Field(default=None, description="the anomaly score, if any")
    label: str | None = Field(default=None, description="the new class, for class changes")
