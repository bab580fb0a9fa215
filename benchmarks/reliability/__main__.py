"""``python -m benchmarks.reliability``: the fault table of docs/reliability.md.

Runs each fault (broker SIGKILL, agent SIGKILL, cloud tier SIGKILL, full disk, gateway
SIGKILL mid-rollout: :mod:`benchmarks.reliability.rollout`) on its
own real stack (see :mod:`benchmarks.reliability.faults`), prints one table and writes
every row, with its notes, as JSON. ``full-disk`` mounts a 4 MiB tmpfs: it needs root.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.reliability.faults import FAULTS, run_fault
from benchmarks.reliability.rollout import run_gateway_kill

#: The gateway row's sensors publish at 50 readings/s per stream (6 streams on 3 agents),
#: so that 1,500 readings span the whole rollout (three waves, 2 s bakes, the restart).
GATEWAY_RATE = 50.0

COLUMNS = (
    ("fault", "fault"),
    ("readings_sent", "readings sent"),
    ("results_expected", "results expected"),
    ("results_live", "live"),
    ("live_lost", "live lost"),
    ("live_duplicates", "live dup"),
    ("results_durable", "durable"),
    ("durable_lost", "durable lost"),
    ("durable_duplicates", "durable dup"),
)


def table(rows: list[dict[str, object]]) -> str:
    widths = [max(len(h), *(len(str(r.get(k, ""))) for r in rows)) for k, h in COLUMNS]
    line = "| " + " | ".join(h.ljust(w) for (_, h), w in zip(COLUMNS, widths, strict=True)) + " |"
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    body = [
        "| "
        + " | ".join(str(r.get(k, "")).ljust(w) for (k, _), w in zip(COLUMNS, widths, strict=True))
        + " |"
        for r in rows
    ]
    return "\n".join([line, sep, *body])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.reliability", description=__doc__)
    ap.add_argument(
        "--faults",
        default=",".join((*FAULTS, "gateway-sigkill")),
        help="comma-separated subset",
    )
    ap.add_argument("--readings", type=int, default=1500, help="readings per stream")
    ap.add_argument("--streams", type=int, default=3)
    ap.add_argument("--rate", type=float, default=250.0, help="readings/s per stream")
    ap.add_argument("--json", type=Path, default=Path("reliability.json"))
    ap.add_argument(
        "--baseline",
        type=Path,
        help="run the agent and offload server from this checkout, with its edge broker "
        "config (to measure what a change fixed)",
    )
    args = ap.parse_args(argv)
    if args.baseline is not None:
        from benchmarks.reliability import harness

        # Only the child processes import from there: this process is already loaded.
        os.environ["PYTHONPATH"] = str(args.baseline.resolve())
        harness.EDGE_BROKER_CONF = (
            args.baseline / "manifests" / "edge" / "base" / "mosquitto" / "mosquitto.conf"
        )
    from models.recipes.build import build_all

    rows = []
    with tempfile.TemporaryDirectory(prefix="reliability-") as tmp:
        built = build_all(Path(tmp) / "models")
        for name in args.faults.split(","):
            t0 = time.monotonic()
            if name == "gateway-sigkill":
                r = run_gateway_kill(Path(tmp) / name, readings=args.readings, rate=GATEWAY_RATE)
            else:
                r = run_fault(
                    name,
                    Path(tmp) / name,
                    Path(built.repository),
                    streams=args.streams,
                    readings=args.readings,
                    rate=args.rate,
                )
            r["seconds"] = round(time.monotonic() - t0, 1)
            rows.append(r)
            print(f"{name}: done in {r['seconds']}s", file=sys.stderr)
    print(table(rows))
    doc = {
        "command": "python -m benchmarks.reliability " + " ".join(argv or sys.argv[1:]),
        "host": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "baseline": str(args.baseline) if args.baseline else None,
        "rows": rows,
    }
    args.json.write_text(json.dumps(doc, indent=2, default=str))
    lost = sum(int(r["durable_lost"]) for r in rows)  # type: ignore[call-overload]
    return 1 if lost else 0


if __name__ == "__main__":
    sys.exit(main())
