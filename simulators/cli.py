"""``fleet-sim``: run scenarios against a local stack, the demo, and the deployment comparison.

    fleet-sim run SCENARIO      one scenario (TOML path or built-in name), report folder
    fleet-sim demo              3 agents, ~300 sensors, 60 s, burst + canary rollout
    fleet-sim compare           local-only / cloud-only / threshold / slo-aware / cascade
    fleet-sim list              built-in scenarios
    fleet-sim fleet             control-plane benchmark: a real gateway, N lite agents

Every flag also reads SIM_<FLAG> from the environment; flags win.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import time
from collections.abc import Sequence
from typing import Any

from pydantic import ValidationError

from models.errors import EdgecloudError
from shell.cli import add_settings_arguments, given
from shell.logs import setup_logging
from shell.settings_errors import describe
from simulators.procs import install_signal_handlers
from simulators.settings import SimSettings

COMMANDS = ("run", "demo", "compare", "list")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fleet-sim",
        description=__doc__.split("\n\n")[0],
        epilog="Every flag also reads SIM_<FLAG> from the environment; flags win.",
    )
    parser.add_argument(
        "command",
        choices=COMMANDS,
        help="run: one scenario; demo: the demo scenario with a summary table; compare: every "
        "deployment of --policies side by side; list: the built-in scenarios",
    )
    parser.add_argument(
        "scenario", nargs="?", default=None, help="scenario TOML path or built-in name (run)"
    )
    add_settings_arguments(parser, SimSettings, skip={"scenario"})
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["fleet"]:  # its own flags (simulators.fleet_cli), not SimSettings
        from simulators.fleet_cli import main as fleet_main

        return fleet_main(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        settings = SimSettings(**given(args, skip={"command"}))
    except ValidationError as exc:
        print(f"fleet-sim: invalid settings: {describe(exc)}", file=sys.stderr)
        return 2
    setup_logging(settings.log_level, settings.log_format)
    if args.command == "list":
        from simulators.scenario import builtin_names

        print("\n".join(builtin_names()))
        return 0
    install_signal_handlers()
    try:
        if args.command == "compare":
            from simulators.compare import compare

            return asyncio.run(compare(settings))
        if args.command == "demo" and args.scenario is None:
            settings = settings.model_copy(update={"scenario": "demo"})
        elif args.command == "run" and args.scenario is None:
            print("fleet-sim run: give a SCENARIO (path or built-in name)", file=sys.stderr)
            return 2
        return asyncio.run(run_command(settings))
    except KeyboardInterrupt:
        print("fleet-sim: interrupted; the stack was stopped", file=sys.stderr)
        return 130
    except (EdgecloudError, FileNotFoundError) as exc:
        print(f"fleet-sim: {exc}", file=sys.stderr)
        return 1


def _dump_tasks_on_sigusr1() -> None:
    """``kill -USR1 <fleet-sim>`` prints every asyncio task's stack (diagnosing a stall)."""
    loop = asyncio.get_running_loop()

    def dump() -> None:
        for task in asyncio.all_tasks(loop):
            task.print_stack(file=sys.stderr)

    loop.add_signal_handler(signal.SIGUSR1, dump)


async def run_command(settings: SimSettings) -> int:
    _dump_tasks_on_sigusr1()
    from simulators.console import Progress, print_result
    from simulators.report import write_report
    from simulators.runner import ScenarioRun
    from simulators.scenario import apply_overrides, load_scenario

    scenario = apply_overrides(load_scenario(settings.scenario), settings)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    workdir = settings.state_dir / "runs" / f"{scenario.name}-{stamp}"
    report_dir = settings.report_dir or settings.state_dir / "reports" / f"{scenario.name}-{stamp}"
    models_dir = settings.models_dir or settings.state_dir / "models"

    async def done(result: Any) -> None:
        write_report(result, report_dir)
        print_result(result, report_dir)
        if settings.hold:
            print("holding the stack up for the dashboards; Ctrl-C to stop")
            await asyncio.Event().wait()

    with Progress(scenario, enabled=settings.live) as progress:
        run = ScenarioRun(scenario, workdir, models_dir, progress=progress.update, on_done=done)
        result = await run.run()
    lost = result.figures["loss"]["missing"]
    if lost:
        print(f"fleet-sim: {lost} result(s) lost", file=sys.stderr)
    return 0 if result.passed else 1
