"""Runs one scenario end to end: stack up, sensors on, faults and rollouts on time, figures.

The timeline is driven from the sensors' clock (seconds since the first reading), so
"cloud outage at 20 s" means 20 s of load, whatever the stack's start-up took.
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bus.topics import Topics
from models.recipes import build_all
from models.repository import ModelRepository
from simulators.capacity import capacity_figures
from simulators.collector import Collector
from simulators.metrics import analyze, detection
from simulators.payloads import BasicMotionsReplay, VibrationSource
from simulators.probes import CpuMeter, agent_status
from simulators.scenario import Scenario, pin_broker
from simulators.sensors import SensorFleet, make_streams
from simulators.shapes import Burst
from simulators.stack import Stack
from simulators.timeline import Timeline

log = logging.getLogger(__name__)


def ensure_models(models_dir: Path) -> Path:
    """Build the built-in models into ``models_dir`` unless they are already there."""
    if not (models_dir / "repository").is_dir() or not (models_dir / "keys" / "dev.key").exists():
        log.info("building the built-in models into %s", models_dir)
        build_all(models_dir)
    return models_dir


@dataclass
class RunResult:
    scenario: Scenario
    figures: dict[str, Any]
    raw: dict[str, Any]
    checks: dict[str, bool] = field(default_factory=dict)
    urls: dict[str, str] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return all(self.checks.values())


class ScenarioRun:
    """One run; ``progress`` gets a dict of live figures about twice a second."""

    def __init__(
        self,
        scenario: Scenario,
        workdir: Path,
        models_dir: Path,
        *,
        progress: Callable[[dict[str, Any]], None] | None = None,
        on_done: Callable[[RunResult], Awaitable[None]] | None = None,
    ) -> None:
        # Once, before anything starts: the stack then starts exactly this broker, and the
        # load fits it (a scenario's [amqtt] table scales the sensors on the embedded one).
        self.sc = pin_broker(scenario, shutil.which("mosquitto"))
        self.workdir = workdir
        self.models_dir = models_dir
        self.progress = progress or (lambda _: None)
        self.on_done = on_done
        self.events: list[dict[str, Any]] = []
        self.cpu = CpuMeter()
        self.timeline = Timeline(self.sc, workdir, models_dir, self.cpu, self._event)
        self.t0 = 0.0
        self.stack_pids: list[int] = []

    def _event(self, kind: str, **detail: Any) -> None:
        t = time.monotonic() - self.t0 if self.t0 else 0.0
        self.events.append({"t": round(t, 3), "kind": kind, **detail})
        log.info("t=%.1fs %s %s", t, kind, detail)

    async def run(self) -> RunResult:
        ensure_models(self.models_dir)
        async with Stack(self.sc.stack, self.workdir, self.models_dir) as stack:
            return await self._with_stack(stack)

    async def _with_stack(self, stack: Stack) -> RunResult:
        sc = self.sc
        repo = ModelRepository(stack.models_dir / "repository", check=False)
        manifest = repo.manifest(sc.stack.model, repo.active(sc.stack.model))
        window, hop = manifest.preprocessing.window, manifest.preprocessing.hop
        self.stack_pids = stack.all_pids()
        collector = Collector(stack.broker_url).start()
        await self.timeline.prepare(stack)
        source = (
            BasicMotionsReplay()
            if sc.sensors.source == "basicmotions"
            else VibrationSource(tuple(sc.sensors.vibration_faults), seed=sc.seed)
        )
        fleet = SensorFleet(
            "127.0.0.1",
            stack.broker_port,
            make_streams(
                sc.sensors.count,
                stack.sites(),
                "imu" if sc.sensors.source == "basicmotions" else "vib",
            ),
            source,
            rate_hz=sc.sensors.rate_hz,
            shape=sc.sensors.shape,
            qos=sc.sensors.qos,
            connections=sc.sensors.connections,
            topics=Topics(),
            seed=sc.seed,
            start_spread_s=sc.sensors.start_spread_s,
            rows_per_message=sc.sensors.rows_per_message,
        )
        await fleet.connect()
        wan0 = (stack.wan.bytes_up, stack.wan.bytes_down) if stack.wan else (0, 0)
        self.cpu.sample(stack.agent_pids())
        self.t0 = time.monotonic()
        start_unix = time.time()
        timeline = asyncio.create_task(self.timeline.run(stack, self.t0), name="timeline")
        ticker = asyncio.create_task(self._ticker(stack, fleet, collector), name="progress")
        try:
            stats = await fleet.run(sc.duration_s)
            self._event("sensors-stopped", published=stats.total)
            await fleet.close()
            await collector.drain(quiet_s=3.0, limit_s=sc.drain_s)
            await timeline
        finally:
            ticker.cancel()
            timeline.cancel()
            collector.stop()
        self.cpu.sample(stack.agent_pids())
        agents = await agent_status(stack)
        burst = None
        if isinstance(sc.sensors.shape, Burst):
            b = sc.sensors.shape
            burst = (b.at[0], b.at[0] + b.length_s)
        figures = analyze(
            collector.results,
            stats.sent,
            window=window,
            hop=hop,
            slo_ms=sc.stack.slo_ms,
            start=start_unix,
            bucket_s=sc.bucket_s,
            burst=burst,
        )
        if sc.sensors.source == "vibration":
            window_s = window / sc.sensors.rate_hz
            figures["detection"] = detection(
                collector.results, list(sc.sensors.vibration_faults), start_unix, window_s
            )
        inferences = max(figures["results"], 1)
        figures["edge_cpu_s"] = self.cpu.seconds()
        figures["edge_cpu_s_per_1k"] = 1000 * self.cpu.seconds() / inferences
        if stack.wan is not None:
            figures["wan_bytes_up"] = stack.wan.bytes_up - wan0[0]
            figures["wan_bytes_down"] = stack.wan.bytes_down - wan0[1]
        figures["edge_capacity"] = capacity_figures(sc, hop)
        figures["broker"] = {
            "kind": sc.stack.broker_kind,
            "sensors": sc.sensors.count,
            "scaled_from": sc.amqtt.scaled_from if sc.amqtt else None,
        }
        figures["late_ticks"] = stats.late_ticks
        figures["bad_results"] = collector.bad
        figures["agent_versions"] = collector.versions()
        figures["agents"] = agents
        figures["agent_readings"] = sum(
            int((a.get("totals") or {}).get("readings", 0)) for a in agents.values()
        )
        figures["rollouts"] = self.timeline.rollout_info
        figures["events"] = self.events
        figures["sensor_rate_per_s"] = stats.per_second
        result = RunResult(
            sc,
            figures,
            raw={"results": collector.results.to_dict(), "published": stats.sent},
            urls=self._urls(stack),
        )
        result.checks = self._checks(figures)
        if self.on_done is not None:
            await self.on_done(result)  # the stack is still up (dashboards, --hold)
        return result

    def _urls(self, stack: Stack) -> dict[str, str]:
        urls = {a.agent_id: f"{a.url}/" for a in stack.agents}
        if stack.gateway is not None:
            urls["gateway"] = f"{stack.gateway_url}/"
        return urls

    def _checks(self, f: dict[str, Any]) -> dict[str, bool]:
        ex = self.sc.expect
        checks: dict[str, bool] = {}
        if ex.max_lost is not None:
            checks[f"lost <= {ex.max_lost}"] = f["loss"]["missing"] <= ex.max_lost
        if ex.min_slo_attainment is not None:
            checks[f"SLO attainment >= {ex.min_slo_attainment}"] = (
                f["slo_attainment"] or 0.0
            ) >= ex.min_slo_attainment
        if ex.min_burst_offload_share is not None:
            share = (f.get("burst") or {}).get("offload_share", 0.0)
            checks[f"burst offload share > {ex.min_burst_offload_share}"] = (
                share > ex.min_burst_offload_share
            )
        if ex.all_agents_on_version is not None:
            want = ex.all_agents_on_version
            versions = f["agent_versions"]
            model = self.sc.stack.model
            on = [a for a, m in versions.items() if m.get(model) == want]
            checks[f"all {self.sc.stack.agents} agents on v{want}"] = (
                len(on) == self.sc.stack.agents
            )
        return checks

    async def _ticker(self, stack: Stack, fleet: SensorFleet, collector: Collector) -> None:
        seen = 0
        while True:
            await asyncio.sleep(0.5)
            self.cpu.sample(stack.agent_pids())
            r = collector.results
            n = len(r)
            recent = slice(seen, n)
            lat = sorted((a - b) * 1000 for a, b in zip(r.recv[recent], r.ts[recent], strict=True))
            routes = r.route[recent]
            self.progress(
                {
                    "t": time.monotonic() - self.t0,
                    "duration": self.sc.duration_s,
                    "published": fleet.published_total,
                    "results": n,
                    "p50_ms": lat[len(lat) // 2] if lat else None,
                    "p99_ms": lat[int(len(lat) * 0.99)] if lat else None,
                    "offload": (sum(x == "cloud" for x in routes) / len(routes)) if routes else 0,
                    "versions": collector.versions(),
                    "events": self.events[-3:],
                }
            )
            seen = n


def write_raw(path: Path, result: RunResult) -> None:
    data = {
        "scenario": result.scenario.model_dump(mode="json"),
        "figures": result.figures,
        "checks": result.checks,
        "raw": result.raw,
    }
    path.write_text(json.dumps(data, default=str))
