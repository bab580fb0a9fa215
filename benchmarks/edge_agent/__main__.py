"""``python -m benchmarks.edge_agent``: edge-agent vs the naive agent, same load, one run.

Starts its own mosquitto (``set_tcp_nodelay true``), builds the built-in models, then for
each workload (stream: hop 10; inference-heavy: hop 1; window 100, one 6-channel JSON
reading per message, 100 devices, QoS 0) and each rate runs a fresh agent, the raw-socket
load generator (:mod:`benchmarks.edge_agent.loadgen`) and a result collector, and reports
achieved rate, results received/expected, p50/p99 publish->result latency, agent CPU and
peak RSS, and time to ready. ``edge-agent x2`` is two processes, each subscribed to half
of the sites (per-message shared subscriptions would split a device's window).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from benchmarks.edge_agent.collector import Collector
from benchmarks.edge_agent.procs import (
    Broker,
    export_baseline,
    start_edge,
    start_naive,
    stop_all,
)

WINDOW = 100
DEFAULT_RATES = {
    ("stream", "naive"): [5000, 10000, 15000, 20000],
    ("stream", "edge-agent x1"): [20000, 30000, 35000],
    ("stream", "edge-agent x2"): [30000, 40000],
    ("heavy", "naive"): [6000, 8000, 10000, 12000],
    ("heavy", "edge-agent x1"): [20000, 25000, 30000, 35000],
    ("heavy", "edge-agent x2"): [30000, 35000],
    ("stream-qos1", "naive"): [5000, 10000, 15000],
    ("stream-qos1", "edge-agent x1"): [10000, 20000, 30000],
    ("stream-qos1", "edge-agent x2"): [20000, 30000],
    ("heavy-qos1", "naive"): [4000, 6000, 8000],
    ("heavy-qos1", "edge-agent x1"): [10000, 15000, 20000],
    ("heavy-qos1", "edge-agent x2"): [15000, 20000],
}
# workload -> (hop, MQTT QoS of readings). The QoS-1 variants measure the reliable path:
# the broker waits for the agent's PUBACKs, and the edge agent journals every reading
# before acknowledging it (--journal-dir); the naive agent subscribes at QoS 1 too.
WORKLOADS = {"stream": (10, 0), "heavy": (1, 0), "stream-qos1": (10, 1), "heavy-qos1": (1, 1)}


def expected_results(per_device: list[int], hop: int) -> int:
    return sum(1 + (n - WINDOW) // hop for n in per_device if n >= WINDOW)


def run_cell(
    broker: Broker,
    models: Path,
    workload: str,
    agent: str,
    rate: float,
    duration: float,
    workdir: Path,
    src: Path | None = None,
) -> dict[str, object]:
    hop, qos = WORKLOADS[workload]
    load1 = os.getloadavg()[0]
    n_procs = 2 if agent.endswith("x2") else 1
    sites = 2 if n_procs == 2 else 1
    collector = Collector(broker.port)
    collector.start()
    t0 = time.monotonic()
    if agent == "naive":
        procs = [start_naive(broker, models, hop, qos)]
    else:
        procs = [
            start_edge(broker, models, hop, i, n_procs, workdir, src, qos=qos)
            for i in range(n_procs)
        ]
    ready_s = max(p.wait_ready() for p in procs) - t0
    ps = [psutil.Process(p.popen.pid) for p in procs]
    cpu0 = [p.cpu_times() for p in ps]
    t_cpu0 = time.monotonic()
    rss_peak = 0.0
    gen = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "benchmarks.edge_agent.loadgen",
            "--port",
            str(broker.port),
            "--rate",
            str(rate),
            "--duration",
            str(duration),
            "--qos",
            str(qos),
            "--sites",
            str(sites),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    while gen.poll() is None:
        rss_peak = max(rss_peak, sum(p.memory_info().rss for p in ps) / len(ps) / 2**20)
        time.sleep(0.25)
    out = gen.stdout.read()  # type: ignore[union-attr]
    if gen.returncode != 0 or not out.strip():
        stop_all(procs)
        collector.stop()
        raise RuntimeError(f"load generator failed (exit {gen.returncode})")
    summary = json.loads(out)
    expected = expected_results(summary["per_device"], hop)
    collector.wait_quiet(expected, timeout=4.0)
    cpu1 = [p.cpu_times() for p in ps]
    span = time.monotonic() - t_cpu0
    busy = sum((b.user + b.system) - (a.user + a.system) for a, b in zip(cpu0, cpu1, strict=True))
    stop_all(procs)
    collector.stop()
    lat = collector.latencies_ms()
    return {
        "workload": workload,
        "agent": agent,
        "rate": rate,
        "achieved": round(summary["sent"] / summary["elapsed"]),
        "expected": expected,
        "received": collector.unique,
        "p50_ms": round(lat[0], 2),
        "p99_ms": round(lat[1], 2),
        "cpu_percent": round(100.0 * busy / max(span, 1e-9), 1),
        "rss_mb": round(rss_peak, 1),
        "ready_s": round(ready_s, 3),
        "load1": round(load1, 1),
    }


def _safe_cell(
    broker: Broker,
    models: Path,
    workload: str,
    agent: str,
    rate: float,
    duration: float,
    workdir: Path,
    src: Path | None = None,
) -> dict[str, object]:
    try:
        return run_cell(broker, models, workload, agent, rate, duration, workdir, src)
    except (RuntimeError, OSError, ValueError) as exc:
        print(f"  cell {workload}/{agent}/{rate:.0f} failed: {exc}", flush=True)
        return {
            "workload": workload,
            "agent": agent,
            "rate": rate,
            "achieved": 0,
            "expected": 1,
            "received": 0,
            "p50_ms": float("nan"),
            "p99_ms": float("nan"),
            "cpu_percent": 0.0,
            "rss_mb": 0.0,
            "ready_s": 0.0,
            "load1": round(os.getloadavg()[0], 1),
            "error": str(exc),
        }


def _rates(workload: str, agent: str, args: argparse.Namespace) -> list[float]:
    if args.rates:
        return [float(r) for r in args.rates.split(",")]
    # A baseline revision runs the one-process rates.
    return DEFAULT_RATES[(workload, "edge-agent x1" if "@" in agent else agent)]


def _badness(row: dict[str, object]) -> tuple[int, float]:
    missing = int(row["expected"]) - int(row["received"])  # type: ignore[call-overload]
    p99 = float(row["p99_ms"])  # type: ignore[arg-type]
    return (missing, p99 if p99 == p99 else float("inf"))


def sustained(rows: list[dict[str, object]], workload: str, agent: str, p99: float) -> float:
    ok = [
        r["rate"]
        for r in rows
        if r["workload"] == workload
        and r["agent"] == agent
        and r["received"] == r["expected"]
        and float(r["p99_ms"]) <= p99
    ]  # type: ignore[arg-type]
    return float(max(ok)) if ok else 0.0  # type: ignore[type-var]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.edge_agent")
    p.add_argument("--duration", type=float, default=5.0, help="seconds of load per cell")
    p.add_argument("--workloads", default="stream,heavy")
    p.add_argument("--agents", default="naive,edge-agent x1,edge-agent x2")
    p.add_argument("--repeat", type=int, default=2, help="runs per cell; the best is kept")
    p.add_argument("--rates", default=None, help="override: comma-separated rates for all cells")
    p.add_argument(
        "--baseline",
        default=None,
        metavar="GIT_REV",
        help="also run edge_agent as of this git revision (one process), side by side",
    )
    p.add_argument("--out", type=Path, default=Path("reports/edge-agent-bench.json"))
    args = p.parse_args(argv)

    rows: list[dict[str, object]] = []
    repeat = max(1, args.repeat)
    agents = args.agents.split(",")
    with tempfile.TemporaryDirectory(prefix="edge-bench-") as tmp:
        work = Path(tmp)
        srcs: dict[str, Path | None] = {a: None for a in agents}
        if args.baseline:
            base = f"edge-agent@{args.baseline} x1"
            srcs[base] = export_baseline(args.baseline, work / "baseline")
            agents.insert(agents.index("edge-agent x1") if "edge-agent x1" in agents else 0, base)
        subprocess.run(
            [sys.executable, "-m", "models", "build", "--out", str(work / "models")],
            check=True,
            capture_output=True,
        )
        broker = Broker(work)
        try:
            for workload in args.workloads.split(","):
                # The machine is shared and its load drifts: every cell runs once per round,
                # ordered by rate so the agents at one rate run minutes apart at most,
                # ``repeat`` rounds; the run with the fewest missing results, then the
                # lowest p99, is kept (same rule for every agent).
                cells = sorted(
                    ((agent, rate) for agent in agents for rate in _rates(workload, agent, args)),
                    key=lambda c: (c[1], agents.index(c[0])),
                )
                runs: dict[tuple[str, float], list[dict[str, object]]] = {c: [] for c in cells}
                for rnd in range(repeat):
                    for agent, rate in cells:
                        row = _safe_cell(
                            broker,
                            work / "models" / "repository",
                            workload,
                            agent,
                            rate,
                            args.duration,
                            work,
                            srcs[agent],
                        )
                        runs[(agent, rate)].append(row)
                        print(f"[round {rnd + 1}/{repeat}] {_fmt(row)}", flush=True)
                for cell in cells:
                    row = min(runs[cell], key=_badness)
                    row["runs"] = len(runs[cell])
                    row["p99_all_runs"] = [r["p99_ms"] for r in runs[cell]]
                    rows.append(row)
        finally:
            broker.stop()
    print()
    print(_HEADER)
    for r in rows:
        print(_fmt(r))
    summary = {
        f"{w}/{a}": sustained(rows, w, a, 25.0) for w in args.workloads.split(",") for a in agents
    }
    print("\nsustained rate with every result delivered and p99 <= 25 ms:")
    for k, v in summary.items():
        print(f"  {k:34s} {v:>8.0f} readings/s")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "machine": {
                    "cpus": psutil.cpu_count(),
                    "python": platform.python_version(),
                    "platform": platform.platform(),
                },
                "duration_s": args.duration,
                "rows": rows,
                "sustained_p99_25ms": summary,
            },
            indent=1,
        )
    )
    print(f"\nwrote {args.out}")
    return 0


_HEADER = (
    f"{'workload':8s} {'agent':20s} {'rate':>7s} {'achieved':>8s} {'recv/expected':>15s} "
    f"{'p50ms':>7s} {'p99ms':>8s} {'cpu%':>6s} {'rssMB':>6s} {'ready_s':>7s} {'load1':>5s}"
)


def _fmt(r: dict[str, object]) -> str:
    return (
        f"{r['workload']:8s} {r['agent']:20s} {r['rate']:>7.0f} {r['achieved']:>8} "
        f"{str(r['received']) + '/' + str(r['expected']):>15s} {r['p50_ms']:>7} "
        f"{r['p99_ms']:>8} {r['cpu_percent']:>6} {r['rss_mb']:>6} {r['ready_s']:>7} "
        f"{r.get('load1', ''):>5}"
    )


if __name__ == "__main__":
    sys.exit(main())
