"""``fleet-sim compare``: one scenario, every deployment, one table.

Deployments are routing policies of the same stack: ``local-only`` (the edge alone),
``cloud-only`` (every batch over the WAN), ``threshold`` (static queue threshold),
``slo-aware`` (deadline-aware routing) and ``cascade`` (edge model first, low
confidence to the larger cloud model). Each runs on a fresh stack, back to back, so
the ratios hold on a noisy machine even where absolute numbers do not.
"""

from __future__ import annotations

import json
import os
import platform
import re
import time
from pathlib import Path
from typing import Any

import psutil
from rich.console import Console
from rich.table import Table

from simulators.capacity import describe
from simulators.runner import ScenarioRun
from simulators.scenario import Scenario, apply_overrides, load_scenario
from simulators.settings import SimSettings

SECTION = "## Deployment comparison"
COLUMNS = (
    "deployment", "p50 ms", "p95 ms", "p99 ms", "SLO attainment", "burst SLO", "results/s",
    "edge CPU s / 1k inf", "bytes to cloud", "offload share", "lost", "host load",
)  # fmt: skip


def _row(name: str, f: dict[str, Any]) -> list[str]:
    lat = f["latency_ms"]

    def ms(v: float | None) -> str:
        return "-" if v is None else f"{v:.1f}"

    slo = f["slo_attainment"]
    burst = (f.get("burst") or {}).get("slo_attainment")
    return [
        name,
        ms(lat["p50"]),
        ms(lat["p95"]),
        ms(lat["p99"]),
        "-" if slo is None else f"{100 * slo:.2f}%",
        "-" if burst is None else f"{100 * burst:.2f}%",
        f"{f['throughput_per_s']:.0f}",
        f"{f['edge_cpu_s_per_1k']:.3f}",
        f"{f.get('wan_bytes_up', 0):,}",
        f"{100 * (f['offload_share'] or 0):.1f}%",
        f"{f['loss']['missing']:,}",
        f"{f.get('host_load', 0.0):.1f}",
    ]


def markdown(
    scenario: Scenario, rows: list[list[str]], command: str, capacity: str | None = None
) -> str:
    sc = scenario
    shape = sc.sensors.shape
    load = f"{sc.sensors.count} sensors x {sc.sensors.rate_hz:g} Hz ({shape.kind}"
    if shape.kind == "burst":
        load += f" x{shape.multiplier:g} for {shape.length_s:g} s at {shape.at[0]:g} s"
    load += ")"
    lines = [
        SECTION,
        "",
        f"Command: `{command}` ({time.strftime('%Y-%m-%d')}).",
        "",
        f"Scenario `{sc.name}`: {sc.stack.agents} agents serving `{sc.stack.model}`, {load}, "
        f"{sc.duration_s:g} s per deployment, SLO {sc.stack.slo_ms:g} ms end to end (sensor "
        f"publish to result received), WAN {2 * sc.stack.wan.delay_ms:g} ms round trip "
        f"through the fleet-sim proxy ({sc.stack.wan.delay_ms:g} ms each way). "
        + (f"Local capacity per agent: {capacity}. " if capacity else "")
        + f"Machine: {platform.machine()}, "
        f"{psutil.cpu_count()} CPUs shared by broker, cloud tier, agents and the simulator. "
        "Edge CPU is user+system seconds of the agent processes (psutil); bytes to cloud are "
        "counted by the WAN proxy; host load is the 1-minute load average at the end of each "
        "run (other work on the machine included).",
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "| " + " | ".join("---" for _ in COLUMNS) + " |",
        *("| " + " | ".join(r) + " |" for r in rows),
        "",
        "Reading it: the deployments run back to back, so a change in host load between rows "
        "moves the tail as much as the policy does; compare rows with similar host load, and "
        "re-run before drawing conclusions from a single row. The built-in `motion-edge` "
        "costs about 10 us per window on ONNX Runtime, far below any real edge device, so "
        "each agent emulates a slower device (`[edge]` in the scenario: the inference worker "
        "is held for the extra time without burning CPU, so broker and cloud tier are not "
        "starved); that gives the burst a defined multiple of local capacity. "
        "Offload share is the "
        "fraction of results computed in the cloud tier (an agent falls back to local "
        "execution when the cloud call fails or would miss the deadline).",
        "",
    ]
    return "\n".join(lines)


def replace_section(path: Path, body: str) -> None:
    """Replace (or append) the '## Deployment comparison' section; other sections untouched."""
    text = path.read_text() if path.exists() else "# Benchmarks\n\n"
    pattern = re.compile(rf"^{re.escape(SECTION)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _: body + "\n", text, count=1)
    else:
        text = text.rstrip("\n") + "\n\n" + body + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


async def compare(settings: SimSettings) -> int:
    base = settings.scenario if settings.scenario != "demo" else "compare"
    scenario = apply_overrides(load_scenario(base), settings)
    policies = [p.strip() for p in settings.policies.split(",") if p.strip()]
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = settings.report_dir or settings.state_dir / "reports" / f"compare-{stamp}"
    out.mkdir(parents=True, exist_ok=True)
    models_dir = settings.models_dir or settings.state_dir / "models"
    console = Console(width=None if Console().is_terminal else 160)
    rows: list[list[str]] = []
    figures: dict[str, Any] = {}
    for policy in policies:
        stack = {"policy": policy}
        if policy == "cascade":
            stack["cloud_model"] = "motion-cloud"
        sc = scenario.model_copy(
            update={"name": f"{scenario.name}-{policy}", "stack": scenario.stack.model_copy(
                update=stack)}
        )  # fmt: skip
        console.print(f"[bold]compare[/]: running {policy} ...")
        workdir = settings.state_dir / "runs" / f"compare-{stamp}" / policy
        result = await ScenarioRun(sc, workdir, models_dir).run()
        result.figures["host_load"] = os.getloadavg()[0]
        figures[policy] = {k: v for k, v in result.figures.items() if k != "buckets"}
        rows.append(_row(policy, result.figures))
    table = Table(title=f"fleet-sim compare: {scenario.name}")
    for c in COLUMNS:
        table.add_column(c, justify="left" if c == "deployment" else "right")
    for r in rows:
        table.add_row(*r)
    console.print(table)
    (out / "compare.json").write_text(json.dumps(figures, indent=1, default=str))
    command = "fleet-sim compare --benchmarks-file docs/benchmarks.md"
    if settings.duration_s is not None:
        command += f" --duration-s {settings.duration_s:g}"
    caps = [f.get("edge_capacity") for f in figures.values() if f.get("edge_capacity")]
    body = markdown(scenario, rows, command, describe(caps[0]) if caps else None)
    (out / "compare.md").write_text(body)
    if settings.benchmarks_file is not None:
        replace_section(settings.benchmarks_file, body)
        console.print(f"updated {settings.benchmarks_file} ({SECTION})")
    console.print(f"raw figures: {out / 'compare.json'}")
    return 0
