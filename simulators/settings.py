"""``fleet-sim`` settings (env prefix ``SIM_``); every CLI flag maps to one field."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from shell.logs import LOG_FORMAT_HELP, LOG_LEVEL_HELP, LogFormat, LogLevel

Policy = Literal["local-only", "cloud-only", "threshold", "slo-aware", "cascade"]
BrokerKind = Literal["auto", "mosquitto", "amqtt"]


class SimSettings(BaseSettings):
    """Configuration of one ``fleet-sim`` invocation."""

    model_config = SettingsConfigDict(env_prefix="SIM_", extra="ignore", secrets_dir=None)

    scenario: str = Field(
        default="demo", description="Scenario TOML path or built-in name (see `fleet-sim list`)."
    )
    state_dir: Path = Field(
        default=Path("var/fleet-sim"),
        description="Where built models, run work dirs (logs, databases) and reports go.",
    )
    models_dir: Path | None = Field(
        default=None, description="Built models (default: <state-dir>/models; built if missing)."
    )
    report_dir: Path | None = Field(
        default=None, description="Report folder (default: <state-dir>/reports/<scenario>-<time>)."
    )
    agents: int | None = Field(default=None, ge=1, description="Override the scenario's agents.")
    sensors: int | None = Field(default=None, ge=1, description="Override the sensor count.")
    rate_hz: float | None = Field(default=None, gt=0, description="Override readings/s/sensor.")
    duration_s: float | None = Field(default=None, gt=0, description="Override the run length.")
    policy: Policy | None = Field(default=None, description="Override the routing policy.")
    slo_ms: float | None = Field(default=None, gt=0, description="Override the latency SLO.")
    wan_delay_ms: float | None = Field(
        default=None, ge=0, description="Override the one-way WAN delay to the cloud tier."
    )
    broker_kind: BrokerKind | None = Field(
        default=None,
        description="Override the scenario's MQTT broker: auto (mosquitto if on PATH, else "
        "the embedded amqtt broker with a warning), mosquitto, or amqtt.",
    )
    policies: str = Field(
        default="local-only,cloud-only,threshold,slo-aware,cascade",
        description="compare: comma-separated deployments to run.",
    )
    benchmarks_file: Path | None = Field(
        default=None,
        description="compare: Markdown file whose 'Deployment comparison' section is replaced.",
    )
    live: bool = Field(default=True, description="Live progress display (rich) on a terminal.")
    hold: bool = Field(
        default=False, description="Keep the stack up after the run (dashboards) until Ctrl-C."
    )
    log_level: LogLevel = Field(default="WARNING", description=LOG_LEVEL_HELP)
    log_format: LogFormat = Field(default="text", description=LOG_FORMAT_HELP)
