"""Fault scenarios: one real stack per fault, QoS-1 sensors, counted results.

Each scenario starts a mosquitto with the shipped persistence settings, a persistent
QoS-1 results subscriber, an ``edge-agent`` with a SQLite store (``--db-path``; its
journal sits next to it) and sensors publishing QoS-1 readings with their own persistent
session. Mid-stream the fault is injected and later repaired; after the last reading
the agent is stopped gracefully and its store read back. A row counts, over the windows
the readings make (motion-edge: one result per 10 readings per stream once 100 are in):
results seen live by the subscriber, results in the store (the durable copy that the
uplink queue and the local history are made from), what is missing from each and the
duplicates (at least once: a window answered just before a crash is answered again).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.reliability.harness import (
    Agent,
    Broker,
    OffloadServer,
    Results,
    Sensors,
    expected_results,
    stored_results,
    wait_until,
)

FAULTS = (
    "broker-sigkill",
    "broker-sigkill-agent-late",
    "agent-sigkill",
    "cloud-sigkill",
    "full-disk",
)


@dataclass
class Ctx:
    """What a fault's inject/repair steps act on."""

    workdir: Path
    repo: Path
    broker: Broker
    agent_args: list[str]
    agent: Agent
    prefix: str
    offload: OffloadServer | None = None
    notes: dict[str, Any] = field(default_factory=dict)
    agents: list[Agent] = field(default_factory=list)


@dataclass
class Fault:
    name: str
    inject: Callable[[Ctx], None]
    repair: Callable[[Ctx], None]
    repair_after_s: float  # of publishing, after the injection
    agent_args: Callable[[Ctx], list[str]] = lambda ctx: []
    needs_offload: bool = False
    db_dir: Callable[[Path], Path] = lambda workdir: workdir / "store"


# -- the faults ---------------------------------------------------------------------------
def _kill_agent(ctx: Ctx) -> None:
    ctx.notes["agent_exit"] = ctx.agent.kill()


def _restart_agent(ctx: Ctx) -> None:
    ctx.agent = Agent(ctx.broker.url, ctx.repo, ctx.prefix, *ctx.agent_args)
    ctx.agents.append(ctx.agent)
    ctx.agent.wait_ready()


def _kill_broker(ctx: Ctx) -> None:
    ctx.broker.kill()
    ctx.notes["broker_killed_at"] = time.monotonic()


def _restart_broker(ctx: Ctx) -> None:
    ctx.broker.start()  # same port, same persistence file
    t0 = ctx.notes["broker_killed_at"]
    ctx.notes["broker_down_s"] = round(time.monotonic() - t0, 2)
    up = time.monotonic()
    wait_until(lambda: ctx.agent.status()["broker_connected"], 15, 0.02)
    ctx.notes["agent_reconnect_s"] = round(time.monotonic() - up, 2)


def _kill_broker_freeze_agent(ctx: Ctx) -> None:
    """The agent comes back after the sensors (the issue saw it 7 s late): it is frozen
    (SIGSTOP) over the broker's restart, so readings re-sent meanwhile can only reach it
    through its session restored from the broker's persistence file."""
    os.kill(ctx.agent.proc.pid, signal.SIGSTOP)
    _kill_broker(ctx)


def _restart_broker_thaw_agent(ctx: Ctx) -> None:
    ctx.broker.start()
    ctx.notes["broker_down_s"] = round(time.monotonic() - ctx.notes["broker_killed_at"], 2)
    time.sleep(1.5)  # the sensors reconnect and re-send while the agent is away
    os.kill(ctx.agent.proc.pid, signal.SIGCONT)


def _kill_cloud(ctx: Ctx) -> None:
    assert ctx.offload is not None
    ctx.notes["routes_before"] = ctx.agent.status()["models"][0]["routes"]
    ctx.notes["cloud_exit"] = ctx.offload.kill()


def _restart_cloud(ctx: Ctx) -> None:
    assert ctx.offload is not None
    ctx.offload = OffloadServer(ctx.repo, ctx.offload.port)
    ctx.offload.wait_ready()


def _tmpfs(workdir: Path) -> Path:
    """A 4 MiB tmpfs for the store and its journal (needs root)."""
    disk = workdir / "disk"
    disk.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(disk)], check=True)
    return disk


def _fill_disk(ctx: Ctx) -> None:
    fd = os.open(ctx.workdir / "disk" / "filler", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (65536, 4096, 512, 1):  # every last byte
            with contextlib.suppress(OSError):
                while os.write(fd, b"\0" * size):
                    pass
    finally:
        os.close(fd)
    ctx.notes["filled_at"] = time.monotonic()


def _free_disk(ctx: Ctx) -> None:
    # What the agent showed while the disk was full.
    ctx.notes["during"] = {
        "readyz": ctx.agent.get("/readyz")[0],
        "store": ctx.agent.status().get("store"),
        "edge_store_degraded": ctx.agent.metric("edge_store_degraded"),
    }
    (ctx.workdir / "disk" / "filler").unlink()
    ctx.notes["full_s"] = round(time.monotonic() - ctx.notes["filled_at"], 2)


def _cloud_args(ctx: Ctx) -> list[str]:
    assert ctx.offload is not None
    return ["--cloud", f"127.0.0.1:{ctx.offload.port}", "--policy", "cloud-only"]


ALL: dict[str, Fault] = {
    "broker-sigkill": Fault("broker-sigkill", _kill_broker, _restart_broker, 1.0),
    "broker-sigkill-agent-late": Fault(
        "broker-sigkill-agent-late", _kill_broker_freeze_agent, _restart_broker_thaw_agent, 1.0
    ),
    "agent-sigkill": Fault("agent-sigkill", _kill_agent, _restart_agent, 0.3),
    "cloud-sigkill": Fault(
        "cloud-sigkill", _kill_cloud, _restart_cloud, 1.5, _cloud_args, needs_offload=True
    ),
    "full-disk": Fault("full-disk", _fill_disk, _free_disk, 3.0, db_dir=_tmpfs),
}


# -- one run -------------------------------------------------------------------------------
def run_fault(
    name: str,
    workdir: Path,
    repo: Path,
    *,
    streams: int = 3,
    readings: int = 1200,
    rate: float = 250.0,
    settle_s: float = 30.0,
) -> dict[str, Any]:
    """Run one fault scenario; returns its row of the fault table.

    ``rate`` is readings per second per stream; the fault is injected after 40 % of the
    readings and repaired ``Fault.repair_after_s`` later while publishing goes on.
    """
    fault = ALL[name]
    inject_at = int(readings * 0.4)
    repair_at = inject_at + max(1, int(fault.repair_after_s * rate))
    if repair_at >= readings:
        raise ValueError(f"{name}: {readings} readings end before the fault is repaired")
    workdir.mkdir(parents=True, exist_ok=True)
    prefix = f"rel{uuid.uuid4().hex[:8]}"
    db_dir = fault.db_dir(workdir)
    mounted = db_dir != workdir / "store"
    db = db_dir / "edge.db"
    broker = Broker(workdir / "broker")
    results = Results(broker.url, prefix)
    offload = None
    if fault.needs_offload:
        offload = OffloadServer(repo)
        offload.wait_ready()
    ctx = Ctx(workdir, repo, broker, [], None, prefix, offload)  # type: ignore[arg-type]
    ctx.agent_args = [
        *("--policy", "local-only"),
        *("--db-path", str(db)),
        *fault.agent_args(ctx),
    ]
    ctx.agent = Agent(broker.url, repo, prefix, *ctx.agent_args)
    ctx.agents.append(ctx.agent)
    sensors: Sensors | None = None
    try:
        ctx.agent.wait_ready()
        sensors = Sensors(broker.url, prefix, streams)
        start = time.monotonic()
        for seq in range(readings):
            if seq == inject_at:
                fault.inject(ctx)
            if seq == repair_at:
                fault.repair(ctx)
            sensors.publish(seq)
            delay = start + (seq + 1) / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        ctx.notes["unacked_readings"] = sensors.wait_acked(settle_s)
        ctx.notes["sensor_fifo_peak"] = sensors.held
        want = expected_results(streams, readings)
        wait_until(lambda: want <= set(results.snapshot()), settle_s, 0.1)
        wait_until(lambda: want <= set(stored_results(db)), settle_s, 0.2)
        time.sleep(0.5)  # late duplicates count too
        after = ctx.agent.status()
        ctx.notes["status_after"] = {k: after.get(k) for k in ("store", "journal", "ready")}
        ctx.notes["routes"] = after["models"][0]["routes"]
        ctx.notes["streams"] = after["streams"]
        ctx.notes["agent_exit"] = ctx.agent.stop()
        live = results.snapshot()
        durable = stored_results(db)
        ctx.notes["log_lines"] = sum(len(a.lines) for a in ctx.agents)
        ctx.notes["error_lines"] = sum(
            1 for a in ctx.agents for ln in a.lines if " ERROR " in ln or " CRITICAL " in ln
        )
        ctx.notes["db_mode"] = oct(os.stat(db).st_mode & 0o777)
        ctx.notes["journal_modes"] = sorted(
            {oct(p.stat().st_mode & 0o777) for p in db.with_suffix(".journal").rglob("*")}
        )
    finally:
        if sensors is not None:
            sensors.close()
        results.close()
        for a in ctx.agents:
            a.kill()
        if ctx.offload is not None:
            ctx.offload.kill()
        broker.stop()
        if mounted:
            subprocess.run(["umount", "-l", str(db_dir)], check=False)
    return row(name, streams, readings, sensors.sent if sensors else 0, want, live, durable, ctx)


def row(
    name: str,
    streams: int,
    readings: int,
    sent: int,
    want: set[tuple[str, int]],
    live: Any,
    durable: Any,
    ctx: Ctx,
) -> dict[str, Any]:
    missing = sorted(want - set(durable))
    if missing:
        ctx.notes["durable_missing"] = f"{len(missing)}: {missing[:3]} .. {missing[-3:]}"
    return {
        "fault": name,
        "streams": streams,
        "readings_sent": sent,
        "results_expected": len(want),
        "results_live": len(want & set(live)),
        "live_lost": len(want - set(live)),
        "live_duplicates": sum(c - 1 for k, c in live.items() if k in want),
        "results_durable": len(want & set(durable)),
        "durable_lost": len(want - set(durable)),
        "durable_duplicates": sum(c - 1 for k, c in durable.items() if k in want),
        "notes": ctx.notes,
    }
