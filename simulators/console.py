"""Terminal output: live progress (rich) during a run and the summary table after it."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table

from simulators.report import summary_rows
from simulators.runner import RunResult
from simulators.scenario import Scenario


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}"


class Progress:
    """A rich Live panel on a terminal; a line every 5 s otherwise (CI logs, pipes)."""

    def __init__(self, scenario: Scenario, *, enabled: bool = True) -> None:
        self.scenario = scenario
        self.console = Console(stderr=True)
        self.live: Live | None = None
        self.enabled = enabled and self.console.is_terminal
        self._last_line = 0.0

    def __enter__(self) -> Progress:
        if self.enabled:
            self.live = Live(self._table({}), console=self.console, refresh_per_second=4)
            self.live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.live is not None:
            self.live.__exit__(None, None, None)

    def _table(self, p: dict[str, Any]) -> Table:
        table = Table(title=f"fleet-sim: {self.scenario.name}", show_header=False)
        if not p:
            table.add_row("starting", "broker, cloud tier, gateway, agents ...")
            return table
        versions: dict[int, int] = {}
        for models in p["versions"].values():
            for v in models.values():
                versions[v] = versions.get(v, 0) + 1
        table.add_row("time", f"{min(p['t'], p['duration']):.0f} / {p['duration']:.0f} s")
        table.add_row("readings published", f"{p['published']:,}")
        table.add_row("results received", f"{p['results']:,}")
        table.add_row("last 0.5 s p50 / p99", f"{_ms(p['p50_ms'])} / {_ms(p['p99_ms'])} ms")
        table.add_row("last 0.5 s offload share", f"{100 * p['offload']:.1f}%")
        table.add_row(
            "agents per version", ", ".join(f"v{k}: {n}" for k, n in sorted(versions.items()))
        )
        for e in p["events"]:
            table.add_row(f"event t={e['t']:.0f}s", e["kind"])
        return table

    def update(self, p: dict[str, Any]) -> None:
        if self.live is not None:
            self.live.update(self._table(p))
        elif time.monotonic() - self._last_line >= 5.0:
            self._last_line = time.monotonic()
            print(
                f"fleet-sim t={p['t']:.0f}s published={p['published']} results={p['results']} "
                f"p99={_ms(p['p99_ms'])}ms offload={100 * p['offload']:.1f}%",
                file=sys.stderr,
                flush=True,
            )


def print_result(result: RunResult, report_dir: Path) -> None:
    console = Console(width=None if Console().is_terminal else 120)
    table = Table(title=f"fleet-sim: {result.scenario.name}")
    table.add_column("figure")
    table.add_column("value", justify="right")
    for k, v in summary_rows(result.figures):
        table.add_row(k, v)
    console.print(table)
    for name, ok in result.checks.items():
        console.print(f"{'[green]PASS' if ok else '[red]FAIL'}[/] {name}")
    console.print("dashboards (while the stack is up):")
    for name, url in result.urls.items():
        console.print(f"  {name}: {url}")
    console.print(f"report: {report_dir / 'summary.md'}")
