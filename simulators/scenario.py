"""Scenario files: TOML in ``simulators/scenarios/``, validated by pydantic.

A scenario says what to start (``[stack]``), how the sensors behave (``[sensors]``),
what breaks and when (``[[faults]]``), which model versions roll out when
(``[[rollouts]]``) and what counts as success (``[expect]``). Times are seconds since
the sensors started.
"""

from __future__ import annotations

import tomllib
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from simulators.broker import resolve_kind
from simulators.payloads import FaultWindow
from simulators.settings import SimSettings
from simulators.shapes import Shape, Steady
from simulators.stack import StackSpec
from simulators.wan import WanProfile


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SensorSpec(_Strict):
    count: int = Field(default=300, ge=1, description="number of sensor streams")
    rate_hz: float = Field(default=10.0, gt=0, description="base readings/s per sensor")
    shape: Shape = Field(default_factory=Steady)
    source: Literal["basicmotions", "vibration"] = "basicmotions"
    qos: int = Field(default=0, ge=0, le=1)
    connections: int = Field(default=2, ge=1, description="raw MQTT sockets to share")
    rows_per_message: int = Field(
        default=1,
        ge=1,
        le=1000,
        description="readings per MQTT message (1: one reading per message; more: the JSON "
        "multi-row form, as sensors that buffer samples send them)",
    )
    start_spread_s: float = Field(
        default=1.0,
        ge=0,
        description="streams start at random moments within this many seconds, so their "
        "windows do not complete in lockstep (0: all start together)",
    )
    vibration_faults: list[FaultWindow] = Field(default_factory=list)


class Fault(_Strict):
    """``wan-outage``/``wan-blackhole`` (length_s), ``wan-drop``, ``wan-profile`` (profile),
    ``agent-kill`` (agent, optional restart_after_s), ``offload-kill``, ``cpu-hog``
    (``procs`` busy-looping processes for length_s: another workload saturating the node)."""

    at_s: float = Field(ge=0)
    kind: Literal[
        "wan-outage",
        "wan-blackhole",
        "wan-drop",
        "wan-profile",
        "agent-kill",
        "offload-kill",
        "cpu-hog",
    ]
    length_s: float = Field(default=0.0, ge=0)
    agent: int = 0
    restart_after_s: float | None = Field(default=None, ge=0)
    procs: int = Field(default=2, ge=1, description="cpu-hog: busy processes")
    profile: WanProfile | None = None


class Rollout(_Strict):
    """At ``at_s``: build (seconds before) and roll out ``model`` ``version`` via the gateway."""

    at_s: float = Field(ge=0)
    model: str = "motion-edge"
    version: int = Field(default=2, ge=2)
    variant: Literal["normal", "nan", "slow"] = "normal"
    strategy: Literal["all-at-once", "canary"] = "canary"
    waves: list[str] = Field(default_factory=lambda: ["1", "100%"])
    bake_s: float = Field(default=5.0, ge=0)
    gates: dict[str, float | int | None] = Field(
        default_factory=dict, description="gateway health gates, e.g. max_p99_ratio = 5"
    )


class Expect(_Strict):
    """Pass/fail criteria checked after the run (the exit code of ``fleet-sim run``)."""

    max_lost: int | None = Field(default=0, description="None: loss is reported, not judged")
    min_slo_attainment: float | None = None
    min_burst_offload_share: float | None = None
    all_agents_on_version: int | None = None


class EmbeddedBrokerLoad(_Strict):
    """``[amqtt]``: the load to run instead when the broker is the embedded amqtt broker.

    amqtt (pure Python) sustains a fraction of mosquitto's message rate; a scenario sized
    for mosquitto would measure the broker, not the system, and lose windows. With this
    table the run scales down and says so in the first line of its summary.
    """

    sensors: int = Field(ge=1, description="sensor streams on amqtt (measured to sustain)")
    scaled_from: int | None = Field(
        default=None, description="set by fleet-sim: the [sensors] count this replaced"
    )


class Scenario(_Strict):
    name: str
    description: str = ""
    duration_s: float = Field(default=30.0, gt=0)
    drain_s: float = Field(default=15.0, ge=0, description="max wait for in-flight results")
    bucket_s: float = Field(default=1.0, gt=0)
    seed: int = 0
    stack: StackSpec = Field(default_factory=StackSpec)
    sensors: SensorSpec = Field(default_factory=SensorSpec)
    faults: list[Fault] = Field(default_factory=list)
    rollouts: list[Rollout] = Field(default_factory=list)
    expect: Expect = Field(default_factory=Expect)
    amqtt: EmbeddedBrokerLoad | None = None

    @model_validator(mode="before")
    @classmethod
    def _edge_into_stack(cls, data: Any) -> Any:
        """The TOML's top-level ``[edge]`` table is ``stack.edge`` (one source of truth)."""
        if isinstance(data, dict) and "edge" in data:
            data = dict(data)
            stack = dict(data.get("stack") or {})
            if "edge" in stack:
                raise ValueError("give the edge device once: [edge] or [stack.edge], not both")
            stack["edge"] = data.pop("edge")
            data["stack"] = stack
        return data


def builtin_names() -> list[str]:
    files = resources.files("simulators") / "scenarios"
    return sorted(p.name.removesuffix(".toml") for p in files.iterdir() if p.name.endswith(".toml"))


def load_scenario(ref: str | Path) -> Scenario:
    """A path to a TOML file, or the name of a built-in scenario (``ci``, ``demo``, ...)."""
    path = Path(ref)
    if path.suffix == ".toml" or path.exists():
        text = path.read_text()
    else:
        res = resources.files("simulators") / "scenarios" / f"{ref}.toml"
        if not res.is_file():
            raise FileNotFoundError(
                f"no scenario file {ref!r}; built-in scenarios: {', '.join(builtin_names())}"
            )
        text = res.read_text()
    return Scenario.model_validate(tomllib.loads(text))


def apply_overrides(sc: Scenario, settings: SimSettings) -> Scenario:
    """CLI/env overrides (``--agents``, ``--policy``...) on top of a scenario file."""
    stack: dict[str, object] = {}
    sensors: dict[str, object] = {}
    top: dict[str, object] = {}
    if settings.agents is not None:
        stack["agents"] = settings.agents
    if settings.policy is not None:
        stack["policy"] = settings.policy
    if settings.slo_ms is not None:
        stack["slo_ms"] = settings.slo_ms
    if settings.broker_kind is not None:
        stack["broker_kind"] = settings.broker_kind
    if settings.wan_delay_ms is not None:
        stack["wan"] = sc.stack.wan.model_copy(update={"delay_ms": settings.wan_delay_ms})
    if settings.sensors is not None:
        sensors["count"] = settings.sensors
        top["amqtt"] = None  # the user's count stands, whatever the broker
    if settings.rate_hz is not None:
        sensors["rate_hz"] = settings.rate_hz
    if settings.duration_s is not None:
        top["duration_s"] = settings.duration_s
    return sc.model_copy(
        update={
            **top,
            "stack": sc.stack.model_copy(update=stack),
            "sensors": sc.sensors.model_copy(update=sensors),
        }
    )


def pin_broker(sc: Scenario, mosquitto: str | None) -> Scenario:
    """Resolve ``broker_kind`` once (``mosquitto``: its path on PATH, or None) and, on the
    embedded amqtt broker, scale the sensors down to the scenario's ``[amqtt]`` load."""
    kind = resolve_kind(sc.stack.broker_kind, mosquitto)
    update: dict[str, Any] = {"stack": sc.stack.model_copy(update={"broker_kind": kind})}
    load = sc.amqtt
    scale = load is not None and load.scaled_from is None and load.sensors < sc.sensors.count
    if kind == "amqtt" and load is not None and scale:
        update["sensors"] = sc.sensors.model_copy(update={"count": load.sensors})
        update["amqtt"] = load.model_copy(update={"scaled_from": sc.sensors.count})
    return sc.model_copy(update=update)
