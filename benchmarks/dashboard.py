"""``python -m benchmarks.dashboard``: what one open edge dashboard costs the agent.

Starts its own mosquitto, builds ``motion-edge``, runs one ``edge-agent`` and a steady
sensor load, then alternates phases of equal length: no client, the dashboard open in
headless Chromium (Debian's ``chromium`` through Playwright; one SSE update per second),
and a bare SSE reader (the same stream without a browser). For each phase it reports the
agent process's CPU (user + system seconds over wall seconds, % of one core, from
psutil) and the number of SSE updates delivered. The cost of the dashboard is the
difference between the "dashboard" and "none" phases of the same load, side by side.

``--pages edge,fleet`` also measures the fleet page: a ``cloud-gateway`` on the same
broker receiving the agent's heartbeats (``--heartbeat-s 1``), its CPU with no page and
with the fleet page open in Chromium (signed in with a viewer token, polling the REST API
every 2 s, the 10-minute history every 10 s).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.request import urlopen

import psutil

from benchmarks.edge_agent.procs import Broker, _free_port
from bus.broker import BrokerUrl, make_client

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]  # fmt: skip
PHASES = ("none", "dashboard", "sse-only", "sse-x10")


class Load:
    """`rate` JSON readings per second over 10 devices (paho, QoS 0), in a thread."""

    def __init__(self, broker_url: str, rate: float) -> None:
        self.rate = rate
        self._stop = threading.Event()
        url = BrokerUrl.parse(broker_url)
        self._client = make_client(url, "dashboard-bench-load")
        self._client.connect(url.host, url.port)
        self._client.loop_start()
        self._thread = threading.Thread(target=self._run, daemon=True)
        if rate > 0:
            self._thread.start()

    def _run(self) -> None:
        seq, per_tick = 0, max(1, round(self.rate / 100))  # 100 ticks/s
        next_at = time.monotonic()
        while not self._stop.is_set():
            for i in range(per_tick):
                dev = (seq + i) % 10
                values = [round(math.sin(seq / 10 + c + dev), 4) for c in range(6)]
                body = json.dumps({"ts": time.time(), "seq": seq // 10, "values": values})
                self._client.publish(f"sensors/bench/dev-{dev}/imu", body, qos=0)
            seq += per_tick
            next_at += 0.01
            self._stop.wait(max(0.0, next_at - time.monotonic()))

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)
        self._client.loop_stop()
        self._client.disconnect()


class SseReader:
    """Reads /api/events without a browser and counts the updates."""

    def __init__(self, url: str) -> None:
        self.events = 0
        self._resp = urlopen(url, timeout=10)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            for line in self._resp:
                if line.startswith(b"data:"):
                    self.events += 1
        except (OSError, ValueError, AttributeError):
            pass  # closed by stop() under the reading thread

    def stop(self) -> None:
        self._resp.close()


def start_agent(
    broker: Broker, repo: Path, port: int, log: Path, *extra: str
) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "edge_agent", "--agent-id", "dash-bench",
           "--broker", broker.url, "--repository", str(repo), "--model", "motion-edge",
           "--http-port", str(port), "--policy", "local-only",
           "--log-level", "WARNING", *extra]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as resp:
                if resp.status == 200:
                    return proc
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"edge-agent did not become ready; see {log}")


def measure(proc: psutil.Process, seconds: float) -> float:
    """Agent CPU over `seconds`, in % of one core."""
    c0, t0 = proc.cpu_times(), time.monotonic()
    time.sleep(seconds)
    c1, t1 = proc.cpu_times(), time.monotonic()
    used = (c1.user - c0.user) + (c1.system - c0.system)
    return 100.0 * used / (t1 - t0)


def readings(base: str) -> int:
    with urlopen(base + "api/status", timeout=5) as resp:
        return int(json.loads(resp.read())["totals"]["readings"])


def run_phase(phase: str, agent: psutil.Process, base: str, seconds: float, browser: Any) -> dict:
    events = 0
    before = readings(base)
    if phase == "none":
        cpu = measure(agent, seconds)
    elif phase.startswith("sse"):
        readers = [SseReader(base + "api/events") for _ in range(10 if phase == "sse-x10" else 1)]
        time.sleep(1.0)  # connections set up outside the measured window
        start = sum(r.events for r in readers)
        cpu = measure(agent, seconds)
        events = sum(r.events for r in readers) - start
        for r in readers:
            r.stop()
    else:
        page = browser.new_page()
        page.goto(base, wait_until="load")
        page.wait_for_function("Number(document.body.dataset.events || 0) >= 1", timeout=10000)
        start = page.evaluate("Number(document.body.dataset.events)")
        cpu = measure(agent, seconds)
        events = page.evaluate("Number(document.body.dataset.events)") - start
        page.close()
    # Readings over the phase (setup included): confirms the load the agent really saw.
    achieved = (readings(base) - before) / seconds
    time.sleep(1.0)  # let a closed stream's handler finish before the next phase
    return {"phase": phase, "cpu_percent": round(cpu, 3), "updates": events,
            "updates_per_s": round(events / seconds, 2),
            "agent_readings_per_s": round(achieved, 1)}  # fmt: skip


FLEET_PHASES = ("none", "fleet-page")
VIEWER_TOKEN = "bench-viewer-token"


def start_gateway(
    broker: Broker, work: Path, public_key: Path
) -> tuple[subprocess.Popen[bytes], int]:
    port = _free_port()
    tokens = work / "gateway-tokens"
    tokens.write_text(f"viewer {VIEWER_TOKEN}\n")
    cmd = [sys.executable, "-m", "cloud_gateway", "serve", "--port", str(port),
           "--db-path", str(work / "gateway.sqlite"), "--blob-dir", str(work / "blobs"),
           "--broker", broker.url, "--trusted-keys", str(public_key),
           "--tokens-file", str(tokens), "--log-level", "WARNING"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=(work / "gateway.log").open("w"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as resp:
                if resp.status == 200:
                    return proc, port
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"cloud-gateway did not start; see {work / 'gateway.log'}")


def run_fleet_phase(phase: str, gateway: psutil.Process, base: str, seconds: float,
                    browser: Any) -> dict:  # fmt: skip
    if phase == "none":
        return {"phase": phase, "cpu_percent": round(measure(gateway, seconds), 3), "updates": 0}
    page = browser.new_page()
    page.goto(base + "/dashboard", wait_until="load")
    page.fill('[data-testid="token-input"]', VIEWER_TOKEN)
    page.click('[data-testid="sign-in"]')
    # Polling with the agent's row (and its history) on the page before measuring; a
    # Python loop because wait_for_function's string form needs eval, which the CSP forbids.
    deadline = time.monotonic() + 20
    rows_js = "document.querySelectorAll('[data-testid=agents] tr:not(.empty)').length"
    while page.evaluate(rows_js) < 1:
        if time.monotonic() > deadline:
            raise RuntimeError("the fleet page never showed the agent")
        time.sleep(0.2)
    start = page.evaluate("Number(document.body.dataset.polls || 0)")
    cpu = measure(gateway, seconds)
    polls = page.evaluate("Number(document.body.dataset.polls || 0)") - start
    page.close()
    time.sleep(1.0)
    return {"phase": phase, "cpu_percent": round(cpu, 3), "updates": polls,
            "updates_per_s": round(polls / seconds, 2)}  # fmt: skip


def fleet_bench(broker: Broker, built: Any, work: Path, rate: float, seconds: float,
                rounds: int, browser: Any) -> dict[str, Any]:  # fmt: skip
    """The fleet page's cost to the gateway, with one agent heartbeating under load."""
    port = _free_port()
    agent = start_agent(broker, built.repository, port, work / "fleet-agent.log",
                        "--heartbeat-s", "1")  # fmt: skip
    gw_proc, gw_port = start_gateway(broker, work, built.public_key)
    load = Load(broker.url, rate)
    try:
        gateway = psutil.Process(gw_proc.pid)
        base = f"http://127.0.0.1:{gw_port}"
        deadline = time.monotonic() + 20
        while not _fleet_seen(base):
            if time.monotonic() > deadline:
                raise RuntimeError("the agent never reported to the gateway")
            time.sleep(0.5)
        time.sleep(3.0)
        rows = []
        for _ in range(rounds):
            for phase in FLEET_PHASES:
                row = run_fleet_phase(phase, gateway, base, seconds, browser)
                rows.append(row | {"rate": rate})
                print(f"  fleet page  {phase:<10}  gateway CPU {row['cpu_percent']:6.2f} %  "
                      f"polls {row['updates']}", flush=True)  # fmt: skip
    finally:
        load.stop()
        for proc in (agent, gw_proc):
            proc.terminate()
            proc.wait(10)
    mean = {
        p: statistics.fmean(r["cpu_percent"] for r in rows if r["phase"] == p) for p in FLEET_PHASES
    }
    return {
        "rate": rate,
        "cpu_mean": {p: round(v, 3) for p, v in mean.items()},
        "fleet_page_cost_pp": round(mean["fleet-page"] - mean["none"], 3),
        "phases": rows,
    }


def _fleet_seen(base: str) -> bool:
    from urllib.request import Request

    req = Request(base + "/api/v1/fleet", headers={"Authorization": f"Bearer {VIEWER_TOKEN}"})
    try:
        with urlopen(req, timeout=2) as resp:
            return bool(json.loads(resp.read()))
    except OSError:
        return False


def summarize(rows: list[dict], rate: float) -> dict[str, Any]:
    by = {p: [r["cpu_percent"] for r in rows if r["phase"] == p] for p in PHASES}
    mean = {p: statistics.fmean(v) for p, v in by.items() if v}
    return {
        "rate": rate,
        "cpu_mean": {p: round(v, 3) for p, v in mean.items()},
        "cpu_all": by,
        "dashboard_cost_pp": round(mean["dashboard"] - mean["none"], 3),
        "sse_cost_pp": round(mean["sse-only"] - mean["none"], 3),
        # Ten clients lift the signal above the 0.05 pp resolution of a 20 s phase.
        "per_client_cost_pp": round((mean["sse-x10"] - mean["none"]) / 10, 3),
        "agent_readings_per_s": round(
            statistics.fmean(r["agent_readings_per_s"] for r in rows if r["phase"] == "none"), 1
        ),
        "updates_per_s": statistics.fmean(
            r["updates_per_s"] for r in rows if r["phase"] == "dashboard"
        ),
    }


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.dashboard", description=__doc__)
    ap.add_argument("--rates", default="0,1000", help="sensor readings/s, comma-separated")
    ap.add_argument("--seconds", type=float, default=20.0, help="length of each phase")
    ap.add_argument("--rounds", type=int, default=2, help="none/dashboard/sse rounds per rate")
    ap.add_argument("--out", type=Path, default=Path("reports/dashboard.json"))
    ap.add_argument("--pages", default="edge", help="edge, fleet or edge,fleet")
    args = ap.parse_args(argv)
    from playwright.sync_api import sync_playwright

    from models.recipes import build_all

    exe = shutil.which("chromium")
    if exe is None:
        print("chromium is not installed (apt-get install chromium)", file=sys.stderr)
        return 2
    results: list[dict[str, Any]] = []
    fleet: list[dict[str, Any]] = []
    pages = {p.strip() for p in args.pages.split(",") if p.strip()}
    rates = [float(r) for r in args.rates.split(",")] if "edge" in pages else []
    with tempfile.TemporaryDirectory(prefix="dash-bench-") as tmp, sync_playwright() as pw:
        work = Path(tmp)
        built = build_all(work / "models", names=("motion-edge",))
        broker = Broker(work)
        browser = pw.chromium.launch(executable_path=exe, headless=True, args=CHROMIUM_ARGS)
        try:
            for rate in rates:
                port = _free_port()
                proc = start_agent(broker, built.repository, port, work / "agent.log")
                load = Load(broker.url, rate)
                try:
                    agent = psutil.Process(proc.pid)
                    time.sleep(3.0)  # warm-up: windows fill, rates settle
                    rows = []
                    for _ in range(args.rounds):
                        for phase in PHASES:
                            row = run_phase(phase, agent, f"http://127.0.0.1:{port}/",
                                            args.seconds, browser)  # fmt: skip
                            rows.append(row | {"rate": rate})
                            print(f"  rate {rate:>6.0f}/s  {phase:<9}  agent CPU "
                                  f"{row['cpu_percent']:6.2f} %  updates {row['updates']}",
                                  flush=True)  # fmt: skip
                    results.append(summarize(rows, rate) | {"phases": rows})
                finally:
                    load.stop()
                    proc.terminate()
                    proc.wait(10)
            if "fleet" in pages:
                top = max(float(r) for r in args.rates.split(","))
                fleet.append(fleet_bench(broker, built, work, top, args.seconds, args.rounds,
                                         browser))  # fmt: skip
        finally:
            browser.close()
            broker.stop()
    print()
    if results:
        print("agent CPU, % of one core (mean of rounds); cost = phase - none, percentage points")
        print(f"{'readings/s':>10} | {'none':>6} | {'dashboard':>9} | {'sse-only':>8} | "
              f"{'sse-x10':>7} | {'dashboard cost':>14} | {'per SSE client':>14} | "
              f"{'updates/s':>9}")  # fmt: skip
        print("-" * 100)
        for r in results:
            m = r["cpu_mean"]
            print(f"{r['agent_readings_per_s']:>10.0f} | {m['none']:>6.2f} | "
                  f"{m['dashboard']:>9.2f} | {m['sse-only']:>8.2f} | {m['sse-x10']:>7.2f} | "
                  f"{r['dashboard_cost_pp']:>+14.2f} | {r['per_client_cost_pp']:>+14.3f} | "
                  f"{r['updates_per_s']:>9.2f}")  # fmt: skip
    for f in fleet:
        m = f["cpu_mean"]
        print(f"\nfleet page: gateway CPU {m['none']:.2f} % without, {m['fleet-page']:.2f} % "
              f"with the page open: cost {f['fleet_page_cost_pp']:+.2f} pp "
              f"(one agent heartbeating every 1 s, {f['rate']:.0f} readings/s)")  # fmt: skip
    report = {
        "benchmark": "dashboard",
        "machine": f"{platform.machine()} {psutil.cpu_count()} cpus, {platform.platform()}",
        "seconds_per_phase": args.seconds,
        "rounds": args.rounds,
        "cpu_unit": "% of one core (process user+system time / wall time): the agent for the "
        "edge page, the gateway for the fleet page",
        "results": results,
        "fleet": fleet,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"\nJSON: {args.out}")
    costs = [r["dashboard_cost_pp"] for r in results] + [f["fleet_page_cost_pp"] for f in fleet]
    return 0 if costs and max(costs) < 2.0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
