"""``fleet-sim fleet`` (and ``python -m benchmarks.fleet``): the control-plane benchmark.

Starts mosquitto and a real ``cloud-gateway serve``, connects N lightweight simulated
agents (each its own MQTT session), and measures heartbeat ingest, gateway CPU/RSS,
a canary rollout and an automatic rollback; prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
from collections.abc import Sequence
from pathlib import Path

from simulators.fleet_bench import FleetBenchConfig, run


def build_parser() -> argparse.ArgumentParser:
    d = FleetBenchConfig()
    p = argparse.ArgumentParser(
        prog="fleet-sim fleet",
        description=(
            "Control-plane benchmark: mosquitto, a real cloud-gateway and N lite agents "
            "(each its own MQTT session); heartbeat ingest, gateway CPU/RSS, a canary, "
            "rollbacks and bundle downloads, printed as a table and written as JSON."
        ),
    )
    p.add_argument(
        "--agents",
        type=int,
        nargs="+",
        default=d.agents,
        help="fleet sizes, one run each (default: %(default)s)",
    )
    p.add_argument(
        "--heartbeat-s",
        type=float,
        default=d.heartbeat_s,
        help="heartbeat interval of every agent (default: %(default)s)",
    )
    p.add_argument(
        "--steady-s",
        type=float,
        default=d.steady_s,
        help="seconds of steady heartbeats measured (default: %(default)s)",
    )
    p.add_argument(
        "--update-s",
        type=float,
        default=d.update_s,
        help="mean simulated install time of an update (default: %(default)s)",
    )
    p.add_argument(
        "--bake-s",
        type=float,
        default=d.bake_s,
        help="bake time of each canary wave (default: %(default)s)",
    )
    p.add_argument(
        "--waves", nargs="+", default=d.waves, help="canary waves (default: %(default)s)"
    )
    p.add_argument(
        "--bad-rate",
        type=float,
        default=d.bad_rate,
        help="share of agents whose install of the bad version fails (default: %(default)s)",
    )
    p.add_argument(
        "--tick-s",
        type=float,
        default=d.tick_s,
        help="the gateway's engine tick (default: %(default)s)",
    )
    p.add_argument(
        "--connect-concurrency",
        type=int,
        default=d.connect_concurrency,
        help="MQTT handshakes in flight while the fleet connects (default: %(default)s)",
    )
    p.add_argument(
        "--download-requests",
        type=int,
        default=d.download_requests,
        help="direct bundle downloads measured after the rollouts (default: %(default)s)",
    )
    p.add_argument(
        "--download-concurrency",
        type=int,
        default=d.download_concurrency,
        help="of those, in flight at once (default: %(default)s)",
    )
    p.add_argument(
        "--json",
        type=Path,
        default=None,
        dest="json_out",
        help="write the results as JSON to this file",
    )
    p.add_argument(
        "--database",
        choices=["sqlite", "postgresql"],
        default=d.database,
        help="the gateway's database: an SQLite file, or a PostgreSQL server this "
        "benchmark starts (Debian's postgresql package, fsync on) (default: %(default)s)",
    )
    p.add_argument(
        "--replicas",
        type=int,
        default=d.replicas,
        help="gateway processes (more than 1 needs --database postgresql; they split the "
        "heartbeats with a shared subscription, one leads the rollouts) (default: %(default)s)",
    )
    p.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="keep logs and databases here (default: a temporary directory)",
    )
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.replicas < 1 or (args.replicas > 1 and args.database != "postgresql"):
        parser.error("--replicas above 1 needs --database postgresql")
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(message)s")
    fields = {k: v for k, v in vars(args).items() if k != "log_level"}
    asyncio.run(run(FleetBenchConfig(**fields)))
    return 0
