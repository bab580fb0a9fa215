"""The result message: one per answered window on ``results/{site}/{device}/{stream}``.

Produced by the agent (``edge_agent.output.results``), which assembles the JSON from
cached per-stream prefixes because building and dumping a dict per result is a
measurable share of its CPU at tens of thousands of results per second; the strings are
held to this model by ``tests/bus/test_contracts.py`` (every output kind, strict, no
unknown field). Consumed with :meth:`Result.model_validate_json` by ``fleet-sim``'s
collector and any subscriber that wants a checked object.

``latency_ms.total`` runs from the latency clock's origin (the sensor ``ts`` by default)
to publish; ``transit`` is the part before the agent read the reading, so ``total ~=
transit + queue + compute + network``. ``model``/``version`` name the model that answered
(for cloud answers, what the offload server reports).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class _Part(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Output(_Part):
    """A classifier's ``label``/``scores`` or an anomaly model's ``score``/``anomaly``;
    all null with ``error`` when the window had no usable answer (e.g. non-finite output)."""

    label: str | None = None
    scores: list[float] | None = None
    score: float | None = None
    anomaly: bool | None = None
    error: str | None = None


class Latency(_Part):
    total: float
    queue: float
    compute: float
    network: float
    transit: float = 0.0  # agents before the transit split did not send it


class Result(BaseModel):
    """One result (unknown fields are kept when parsing: a newer agent may add some)."""

    model_config = ConfigDict(extra="allow")

    site: str
    device: str
    stream: str
    agent: str = Field(description="the agent that answered")
    seq: int = Field(description="sequence number of the window's last reading")
    ts: float = Field(description="the window's last reading's ts (latency clock origin)")
    model: str
    version: int | None
    output: Output
    route: Literal["edge", "cloud"]
    reason: str = Field(description="why this route (the routing policy's reason)")
    latency_ms: Latency
    deadline_met: bool


class StrictResult(Result):
    """The same contract with no field beyond it: what the agent itself must produce."""

    model_config = ConfigDict(extra="forbid")
