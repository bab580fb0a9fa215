"""The control-plane benchmark: a real ``cloud-gateway serve`` against N lite agents.

One run per fleet size: a fresh mosquitto (``max_connections -1``) and a fresh gateway
process (SQLite in a temporary directory; or ``--database postgresql``: a fresh
PostgreSQL server with fsync on and ``--replicas`` gateway processes sharing it, the
heartbeats split by a shared subscription), N :class:`simulators.lite_agent.LiteAgent`
sessions in this process, then three phases:

1. **steady**: ``--steady-s`` seconds of heartbeats; the gateway's ingest rate (its own
   ``gateway_heartbeats_total`` counter, summed over replicas), CPU (psutil, user+system
   over wall time: 1.0 is one full core; all replicas together, and PostgreSQL's own
   processes separately) and RSS.
2. **canary**: a rollout of v2 in waves 1 %, 10 %, 100 % with ``--bake-s``; per wave the
   time from issue to every agent of the wave serving v2 (the agents' own swap times),
   and the rollout total; "after the last bake" is the time from the last wave's issue
   to the rollout's ``succeeded`` event.
3. **rollback**: a rollout of v3, a version the simulated install fails on a share
   ``--bad-rate`` of agents; the time from the first failure to the gateway's
   ``rolled-back`` event and to every touched agent serving v2 again; then the same
   with ``all-at-once``, so the failing wave is the whole fleet.

Bundle throughput: the agents' shared cache downloads each bundle once (counted per
agent); what the gateway can serve when every agent downloads for itself is measured
separately, ``--download-requests`` authenticated GETs ``--download-concurrency`` at
a time (downloads/s, MB/s, gateway CPU). Everything printed as a
table and written as JSON (one object per fleet size).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import resource
import sys
import tempfile
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil

from cloud_gateway.client import GatewayClient
from models import signing
from simulators.broker import free_port, start_broker, wait_broker
from simulators.lite_agent import LiteConfig, LiteFleet
from simulators.procs import Managed, ProcessSet

log = logging.getLogger(__name__)

MODEL = "motion-edge"
ADMIN = "bench-admin-token"
AGENT = "bench-agent-token"


@dataclass
class FleetBenchConfig:
    agents: list[int] = field(default_factory=lambda: [1000])
    heartbeat_s: float = 10.0
    steady_s: float = 30.0
    update_s: float = 1.0
    bake_s: float = 5.0
    waves: list[str] = field(default_factory=lambda: ["1%", "10%", "100%"])
    bad_rate: float = 0.01
    tick_s: float = 0.5
    connect_concurrency: int = 200
    download_requests: int = 2000
    download_concurrency: int = 50
    rollout_timeout_s: float = 600.0
    database: str = "sqlite"  # or "postgresql"
    replicas: int = 1
    json_out: Path | None = None
    workdir: Path | None = None


def raise_nofile() -> int:
    """Raise the soft open-files limit to the hard one (children inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def build_bundles(root: Path) -> tuple[dict[int, Path], Path]:
    """Signed bundles v1..v3 of the demo model and the trusted-keys directory."""
    from models.recipes.build import build_model

    key = root / "keys" / "dev.key"
    signing.ensure_key(key)
    trusted = root / "trusted"
    trusted.mkdir(exist_ok=True)
    (trusted / "dev.pub").write_bytes(signing.public_key_path(key).read_bytes())
    bundles = {v: build_model(MODEL, v, root / "bundles", key) for v in (1, 2, 3)}
    return bundles, trusted


def _scrape(url: str) -> dict[str, float]:
    """The gateway's /metrics as {"name{labels}": value}."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=60) as resp:
        text = resp.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            with contextlib.suppress(ValueError):
                out[name] = float(value)
    return out


def _online(url: str) -> float:
    try:
        return _scrape(url).get("gateway_agents_online", 0.0)
    except OSError:
        return 0.0


class GatewayProbe:
    """CPU and RSS of child processes (the gateway replicas, the broker, PostgreSQL with
    its backends: ``children``), sampled by psutil. CPU is summed; RSS is the largest
    process's (per replica, which is what a pod's memory limit is about)."""

    def __init__(self, *pids: int, children: bool = False) -> None:
        self.procs = [psutil.Process(pid) for pid in pids]
        self.children = children
        self.peak_rss = 0
        self._done: dict[int, float] = {}  # pid -> last CPU seen (backends that exited)

    def _all(self) -> list[psutil.Process]:
        out = list(self.procs)
        if self.children:
            for proc in self.procs:
                with contextlib.suppress(psutil.Error):
                    out += proc.children(recursive=True)
        return out

    def cpu(self) -> float:
        for proc in self._all():
            with contextlib.suppress(psutil.Error):
                t = proc.cpu_times()
                self._done[proc.pid] = t.user + t.system
        return sum(self._done.values())

    def rss(self) -> int:
        rss = 0
        for proc in self.procs:
            with contextlib.suppress(psutil.Error):
                rss = max(rss, proc.memory_info().rss)
        self.peak_rss = max(self.peak_rss, rss)
        return rss


async def _until(pred: Any, timeout_s: float, what: str, every: float = 0.2) -> float:
    t0 = time.monotonic()
    while not pred():
        if time.monotonic() - t0 > timeout_s:
            raise TimeoutError(f"{what} not reached within {timeout_s:g} s")
        await asyncio.sleep(every)
    return time.monotonic() - t0


async def _wait_rollout(url: str, rid: str, timeout_s: float) -> tuple[str, float]:
    """Until no rollout runs, then the rollout's final state and the slowest /metrics
    answer meanwhile (how long the engine held the gateway's event loop, at worst).

    Polls /metrics: the rollout API carries every agent's verdict, which at 10,000
    agents would load the gateway more than the rollout does."""
    loop = asyncio.get_running_loop()
    running = 'gateway_rollouts{state="running"}'
    t0, slowest = time.monotonic(), 0.0
    while True:
        if time.monotonic() - t0 > timeout_s:
            raise TimeoutError(f"rollout {rid} still running after {timeout_s:g} s")
        asked = time.monotonic()
        try:
            metrics = await loop.run_in_executor(None, _scrape, url)
        except OSError:  # includes timeouts: a stalled gateway, measured below
            metrics = None
        slowest = max(slowest, time.monotonic() - asked)
        if metrics is not None and metrics.get(running, 0) == 0:
            break
        await asyncio.sleep(0.5)
    view = await loop.run_in_executor(
        None, GatewayClient(url, ADMIN).get, f"/api/v1/rollouts/{rid}"
    )
    return str(view["state"]), slowest


def _events(url: str, rid: str) -> list[dict[str, Any]]:
    view = GatewayClient(url, ADMIN).get(f"/api/v1/rollouts/{rid}")
    return list(view.get("events") or view.get("history") or [])


async def run_size(
    n: int, cfg: FleetBenchConfig, root: Path, bundles: dict[int, Path], trusted: Path
) -> dict[str, Any]:
    work = root / f"n{n}"
    work.mkdir(parents=True)
    procs = ProcessSet(work / "logs")
    result: dict[str, Any] = {
        "agents": n,
        "heartbeat_s": cfg.heartbeat_s,
        "database": cfg.database,
        "replicas": cfg.replicas,
    }
    fleet: LiteFleet | None = None
    with contextlib.ExitStack() as stack:
        database = None
        if cfg.database == "postgresql":
            from simulators.postgres import postgres_server

            database = stack.enter_context(postgres_server(durable=True))
        try:
            broker, bport = start_broker(
                procs, work, "mosquitto", extra_conf="max_connections -1\n"
            )
            await wait_broker(broker, bport, 10.0)
            tokens = work / "tokens"
            tokens.write_text(f"admin {ADMIN}\nagent {AGENT}\n")
            dkey = work / "gw" / "desired.key"
            signing.ensure_key(dkey)
            ports = [free_port() for _ in range(cfg.replicas)]
            urls = [f"http://127.0.0.1:{p}" for p in ports]
            url = urls[0]  # the API and bundle URL (a Service would front them all)
            gateways = []
            for i, gport in enumerate(ports):
                argv = [
                    sys.executable, "-m", "cloud_gateway", "serve",
                    "--port", str(gport), "--public-url", url,
                    "--db-path", str(work / "gw" / "gateway.sqlite"),
                    "--blob-dir", str(work / "gw" / "blobs"),
                    "--broker", f"mqtt://127.0.0.1:{bport}",
                    "--trusted-keys", str(trusted), "--tokens-file", str(tokens),
                    "--desired-signing-key", str(dkey),
                    "--heartbeat-timeout-s", str(cfg.heartbeat_s * 3),
                    "--tick-s", str(cfg.tick_s), "--log-level", "WARNING",
                ]  # fmt: skip
                if database is not None:
                    argv += ["--database-url", database]
                if cfg.replicas > 1:
                    argv += ["--mqtt-share-group", "gateways"]
                gw = procs.spawn(f"cloud-gateway-{i}", argv)
                await _wait_http(gw, urls[i])
                gateways.append(gw)
            client = GatewayClient(url, ADMIN)
            for b in bundles.values():
                client.push(b)
            probe = GatewayProbe(*(g.pid for g in gateways))
            broker_probe = GatewayProbe(broker.pid)
            db_probe = _database_probe(database)
            lite = LiteConfig(
                heartbeat_s=cfg.heartbeat_s,
                update_s=cfg.update_s,
                failing_versions={3: cfg.bad_rate},
            )
            fleet = LiteFleet(
                "127.0.0.1",
                bport,
                n,
                gateway_url=url,
                gateway_keys=signing.load_trusted_keys(signing.public_key_path(dkey)),
                token=AGENT,
                config=lite,
                models={MODEL: 1},
            )
            result["connect_s"] = round(
                await fleet.start(cfg.connect_concurrency, lambda d: log.info("%d connected", d)),
                2,
            )
            await _until(lambda: _online(url) >= n, 120, f"{n} agents online", 1.0)
            result["steady"] = await _steady(
                urls, probe, broker_probe, db_probe, fleet, cfg.steady_s
            )
            result["canary"] = await _canary(url, probe, fleet, cfg)
            result["rollback"] = await _rollback(url, probe, fleet, cfg, "canary")
            # The worst case: the failing wave is the whole fleet (all-at-once).
            result["rollback_all"] = await _rollback(url, probe, fleet, cfg, "all-at-once")
            cache = fleet.cache
            result["bundles"] = {
                "downloads": cache.downloads,
                "agent_downloads": cache.served,
                "bytes": cache.bytes,
            } | await _downloads(
                url, probe, min(n, cfg.download_requests), cfg.download_concurrency
            )
            result["sim"] = {
                k: v for k, v in asdict(fleet.stats).items() if k not in ("swapped_at", "failed_at")
            }
            result["gateway_peak_rss_mb"] = round(probe.peak_rss / 2**20, 1)
            return result
        finally:
            if fleet is not None:
                await fleet.stop()
            procs.stop()


def _database_probe(url: str | None) -> GatewayProbe | None:
    """PostgreSQL's postmaster and backends (found by the port in ``url``)."""
    if url is None:
        return None
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    for proc in psutil.process_iter(["name", "cmdline"]):
        cmd = proc.info["cmdline"] or []
        if (
            proc.info["name"] == "postgres"
            and "-p" in cmd
            and cmd[cmd.index("-p") + 1] == str(port)
        ):
            return GatewayProbe(proc.pid, children=True)
    return None


async def _wait_http(proc: Managed, url: str) -> None:
    loop = asyncio.get_running_loop()
    for _ in range(200):
        if not proc.alive():
            raise RuntimeError(f"cloud-gateway exited:\n{proc.log_tail()}")
        try:
            await loop.run_in_executor(None, urllib.request.urlopen, f"{url}/healthz")
            return
        except OSError:
            await asyncio.sleep(0.1)
    raise TimeoutError("cloud-gateway did not answer /healthz")


async def _steady(
    urls: list[str],
    probe: GatewayProbe,
    broker: GatewayProbe,
    database: GatewayProbe | None,
    fleet: LiteFleet,
    seconds: float,
) -> dict[str, Any]:
    key = 'gateway_heartbeats_total{outcome="ingested",transport="mqtt"}'

    def ingested() -> float:
        return sum(_scrape(u).get(key, 0.0) for u in urls)

    before, cpu0, t0 = ingested(), probe.cpu(), time.monotonic()
    bcpu0, scpu0 = broker.cpu(), time.process_time()
    dcpu0 = database.cpu() if database is not None else 0.0
    sent0 = fleet.stats.heartbeats
    await asyncio.sleep(seconds)
    after, cpu1, t1 = ingested(), probe.cpu(), time.monotonic()
    wall = t1 - t0
    out = {
        "seconds": round(wall, 1),
        "sent_per_s": round((fleet.stats.heartbeats - sent0) / wall, 1),
        "ingested_per_s": round((after - before) / wall, 1),
        "gateway_cpu": round((cpu1 - cpu0) / wall, 3),
        "gateway_rss_mb": round(probe.rss() / 2**20, 1),
        "broker_cpu": round((broker.cpu() - bcpu0) / wall, 3),
        "broker_rss_mb": round(broker.rss() / 2**20, 1),
        "simulator_cpu": round((time.process_time() - scpu0) / wall, 3),
        "simulator_rss_mb": round(psutil.Process().memory_info().rss / 2**20, 1),
    }
    if database is not None:
        out["database_cpu"] = round((database.cpu() - dcpu0) / wall, 3)
    return out


async def _start(url: str, version: int, cfg: FleetBenchConfig, strategy: str = "canary") -> str:
    body = {
        "model": MODEL,
        "version": version,
        "strategy": strategy,
        "waves": cfg.waves,
        "bake_s": cfg.bake_s,
        "wave_timeout_s": 120.0,
        # Heartbeats every heartbeat_s: a control agent is fresh for 1.5 intervals.
        "gates": {"control_max_age_s": cfg.heartbeat_s * 1.5 + 1},
    }
    loop = asyncio.get_running_loop()
    row = await loop.run_in_executor(None, GatewayClient(url, ADMIN).post, "/api/v1/rollouts", body)
    return str(row["id"])


def _wave_times(events: list[dict[str, Any]], kind: str) -> list[float]:
    return [float(e["ts"]) for e in events if e.get("kind") == kind]


async def _canary(
    url: str, probe: GatewayProbe, fleet: LiteFleet, cfg: FleetBenchConfig
) -> dict[str, Any]:
    cpu0, t0, w0 = probe.cpu(), time.monotonic(), time.time()
    rid = await _start(url, 2, cfg)
    state, slowest = await _wait_rollout(url, rid, cfg.rollout_timeout_s)
    wall = time.monotonic() - t0
    cpu = (probe.cpu() - cpu0) / wall
    events = await asyncio.get_running_loop().run_in_executor(None, _events, url, rid)
    issued = _wave_times(events, "wave-issued")
    converged = _wave_times(events, "wave-converged")
    done = _wave_times(events, "succeeded")
    swaps = fleet.stats.swapped_at.get((MODEL, 2), {})
    out: dict[str, Any] = {
        "state": state,
        "seconds": round(wall, 1),
        "gateway_cpu": round(cpu, 3),
        "gateway_rss_mb": round(probe.rss() / 2**20, 1),
        "on_v2": fleet.on_version(MODEL, 2),
        "waves_issue_to_converged_s": [
            round(c - i, 2) for i, c in zip(issued, converged, strict=False)
        ],
        "last_wave_issue_to_done_s": round(done[0] - issued[-1], 2) if done and issued else None,
        "last_wave_bake_end_to_done_s": (
            round(done[0] - (converged[-1] + cfg.bake_s), 2) if done and converged else None
        ),
        "start_to_done_s": round(done[0] - w0, 2) if done else None,
        "agent_swaps": len(swaps),
        "slowest_metrics_s": round(slowest, 2),
    }
    return out


async def _rollback(
    url: str, probe: GatewayProbe, fleet: LiteFleet, cfg: FleetBenchConfig, strategy: str
) -> dict[str, Any]:
    for version in (2, 3):  # this phase's swaps and failures only
        fleet.stats.swapped_at.pop((MODEL, version), None)
        fleet.stats.failed_at.pop((MODEL, version), None)
    cpu0, t0 = probe.cpu(), time.monotonic()
    rid = await _start(url, 3, cfg, strategy)
    state, slowest = await _wait_rollout(url, rid, cfg.rollout_timeout_s)
    events = await asyncio.get_running_loop().run_in_executor(None, _events, url, rid)
    failed = fleet.stats.failed_at.get((MODEL, 3), {})
    touched = set(fleet.stats.swapped_at.get((MODEL, 3), {})) | set(failed)
    # Every agent that was issued v3 must be back on v2.
    await _until(
        lambda: all(a.models.get(MODEL) == 2 for a in fleet.agents if a.agent_id in touched),
        60,
        "rollback to v2",
    )
    back = max(
        (fleet.stats.swapped_at.get((MODEL, 2), {}).get(a, 0.0) for a in touched), default=0.0
    )
    first_fail = min(failed.values(), default=None)
    rolled = _wave_times(events, "rolled-back")
    issued = _wave_times(events, "wave-issued")
    wall = time.monotonic() - t0
    offset = time.monotonic() - time.time()  # gateway event times are wall clock
    return {
        "state": state,
        "waves_issued": len(issued),
        "agents_touched": len(touched),
        "agents_failed": len(failed),
        "first_failure_to_all_back_s": round(back - first_fail, 2) if first_fail else None,
        "first_failure_to_rolled_back_s": (
            round(rolled[0] + offset - first_fail, 2) if rolled and first_fail else None
        ),
        "rolled_back_to_all_back_s": round(back - (rolled[0] + offset), 2) if rolled else None,
        "gateway_cpu": round((probe.cpu() - cpu0) / wall, 3),
        "slowest_metrics_s": round(slowest, 2),
    }


async def _downloads(
    url: str, probe: GatewayProbe, requests: int, concurrency: int
) -> dict[str, Any]:
    """What the gateway serves when agents download without a shared cache: ``requests``
    authenticated GETs of the v2 bundle, ``concurrency`` at a time."""
    import aiohttp

    gate = asyncio.Semaphore(concurrency)
    total = 0
    bundle = f"{url}/api/v1/models/{MODEL}/versions/2/bundle"
    headers = {"Authorization": f"Bearer {AGENT}"}

    async def one(session: aiohttp.ClientSession) -> None:
        nonlocal total
        async with gate, session.get(bundle, headers=headers) as resp:
            resp.raise_for_status()
            total += len(await resp.read())

    cpu0, t0 = probe.cpu(), time.perf_counter()
    async with aiohttp.ClientSession() as session:
        await asyncio.gather(*(one(session) for _ in range(requests)))
    wall = time.perf_counter() - t0
    return {
        "direct_requests": requests,
        "direct_downloads_per_s": round(requests / wall, 1),
        "direct_mb_per_s": round(total / wall / 1e6, 2),
        "bundle_bytes": total // requests if requests else 0,
        "direct_gateway_cpu": round((probe.cpu() - cpu0) / wall, 3),
    }


def table(results: list[dict[str, Any]]) -> str:
    cols = [("agents", lambda r: r["agents"])]
    rows = [
        ("database, gateway replicas", lambda r: f"{r['database']} x{r['replicas']}"),
        ("connect s", lambda r: r["connect_s"]),
        ("heartbeats sent/s", lambda r: r["steady"]["sent_per_s"]),
        ("heartbeats ingested/s", lambda r: r["steady"]["ingested_per_s"]),
        ("gateway CPU steady (cores)", lambda r: r["steady"]["gateway_cpu"]),
        ("gateway RSS steady MB (largest replica)", lambda r: r["steady"]["gateway_rss_mb"]),
        ("PostgreSQL CPU steady (cores)", lambda r: r["steady"]["database_cpu"]),
        ("mosquitto CPU steady (cores)", lambda r: r["steady"]["broker_cpu"]),
        ("mosquitto RSS MB", lambda r: r["steady"]["broker_rss_mb"]),
        ("simulator CPU steady (cores)", lambda r: r["steady"]["simulator_cpu"]),
        ("simulator RSS MB", lambda r: r["steady"]["simulator_rss_mb"]),
        ("canary state", lambda r: r["canary"]["state"]),
        ("canary waves issue->converged s", lambda r: r["canary"]["waves_issue_to_converged_s"]),
        (
            "canary last bake end -> succeeded s",
            lambda r: r["canary"]["last_wave_bake_end_to_done_s"],
        ),
        ("canary start -> succeeded s", lambda r: r["canary"]["start_to_done_s"]),
        ("gateway CPU during canary", lambda r: r["canary"]["gateway_cpu"]),
        ("slowest /metrics during canary s", lambda r: r["canary"]["slowest_metrics_s"]),
        ("rollback state", lambda r: r["rollback"]["state"]),
        (
            "rollback agents touched/failed",
            lambda r: f"{r['rollback']['agents_touched']}/{r['rollback']['agents_failed']}",
        ),
        (
            "rollback first failure -> all back s",
            lambda r: r["rollback"]["first_failure_to_all_back_s"],
        ),
        ("slowest /metrics during rollback s", lambda r: r["rollback"]["slowest_metrics_s"]),
        (
            "rollback of a 100 % wave: touched/failed",
            lambda r: f"{r['rollback_all']['agents_touched']}/{r['rollback_all']['agents_failed']}",
        ),
        (
            "rollback of a 100 % wave: first failure -> all back s",
            lambda r: r["rollback_all"]["first_failure_to_all_back_s"],
        ),
        (
            "rollback of a 100 % wave: first failure -> rolled-back event s",
            lambda r: r["rollback_all"]["first_failure_to_rolled_back_s"],
        ),
        (
            "slowest /metrics, rollback of a 100 % wave s",
            lambda r: r["rollback_all"]["slowest_metrics_s"],
        ),
        (
            "bundle downloads (real/agent)",
            lambda r: f"{r['bundles']['downloads']}/{r['bundles']['agent_downloads']}",
        ),
        ("bundle bytes", lambda r: r["bundles"]["bundle_bytes"]),
        (
            "direct bundle downloads/s (50 at a time)",
            lambda r: r["bundles"]["direct_downloads_per_s"],
        ),
        ("direct bundle download MB/s", lambda r: r["bundles"]["direct_mb_per_s"]),
        ("gateway CPU while serving downloads", lambda r: r["bundles"]["direct_gateway_cpu"]),
        ("gateway peak RSS MB", lambda r: r["gateway_peak_rss_mb"]),
    ]
    head = "| metric | " + " | ".join(str(c[1](r)) for c in cols for r in results) + " |"
    sep = "| --- |" + " ---: |" * len(results)
    lines = [head.replace("| metric |", "| agents |"), sep]
    for name, get in rows:
        cells = []
        for r in results:
            try:
                cells.append(str(get(r)))
            except (KeyError, TypeError):
                cells.append("-")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


async def run(cfg: FleetBenchConfig) -> list[dict[str, Any]]:
    nofile = raise_nofile()
    need = max(cfg.agents) + 256
    if nofile < need:
        log.warning("open-files limit %d < %d: raise ulimit -n (hard limit)", nofile, need)
    with contextlib.ExitStack() as stack:
        root = cfg.workdir or Path(
            stack.enter_context(tempfile.TemporaryDirectory(prefix="fleetbench-"))
        )
        bundles, trusted = build_bundles(root)
        results = []
        for n in cfg.agents:
            log.info("fleet of %d lite agents", n)
            r = await run_size(n, cfg, root, bundles, trusted)
            r["nofile_limit"] = nofile
            results.append(r)
            print(json.dumps(r), file=sys.stderr, flush=True)
    print(table(results))
    if cfg.json_out is not None:
        cfg.json_out.parent.mkdir(parents=True, exist_ok=True)
        cfg.json_out.write_text(
            json.dumps({"config": _cfg_json(cfg), "results": results}, indent=2)
        )
    return results


def _cfg_json(cfg: FleetBenchConfig) -> dict[str, Any]:
    d = asdict(cfg)
    return {k: str(v) if isinstance(v, Path) else v for k, v in d.items()}
