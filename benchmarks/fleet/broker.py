"""How many fleet messages one mosquitto moves on this machine.

    python -m benchmarks.fleet.broker [--messages 200000] [--publishers 4] [--json FILE]

The fleet's traffic pattern, at full speed: ``--publishers`` raw connections
(:class:`simulators.mqtt_wire.AsyncWirePublisher`, frames encoded before the clock
starts) publish heartbeat-sized (~700 B) messages on ``fleet/{agent}/status`` for
10,000 distinct agents, and one subscriber on ``fleet/+/status`` (as the gateway
subscribes; :class:`simulators.mqtt_session.Session`) receives them. Three cells:
QoS 0 not retained, QoS 1 retained (what agents send), and QoS 1 retained with no
subscriber (ingest only). Reported: messages/s end to end, and mosquitto's CPU per
message (psutil on its pid), from which messages/s per mosquitto core follows; the
publishers and the subscriber share this process, so the end-to-end rate may be
Python's limit rather than the broker's: the CPU figure is the broker's own.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

from simulators.broker import free_port, mosquitto_config, mqtt_handshake
from simulators.mqtt_frames import PacketIds, publish_frame
from simulators.mqtt_session import open_session
from simulators.mqtt_wire import AsyncWirePublisher

AGENTS = 10_000


def _frames(n: int, qos: int, retain: bool, offset: int) -> list[bytes]:
    body = json.dumps({"agent_id": "x", "metrics": {"inferences": 1}, "pad": "p" * 600}).encode()
    ids = PacketIds()
    return [
        publish_frame(
            f"fleet/agent-{(offset + i) % AGENTS:05d}/status",
            body,
            qos=qos,
            retain=retain,
            packet_id=ids() if qos else None,
        )
        for i in range(n)
    ]


async def cell(
    port: int, broker: psutil.Process, n: int, publishers: int, qos: int, retain: bool, sub: bool
) -> dict[str, Any]:
    received = 0
    target = n // publishers * publishers
    done = asyncio.Event()

    def on_message(topic: str, payload: bytes) -> None:
        nonlocal received
        received += 1
        if received >= target:
            done.set()

    session = None
    if sub:
        session = await open_session(
            "127.0.0.1",
            port,
            f"bench-sub-{qos}-{retain}",
            ("bench/will", b""),
            ["fleet/+/status"],
            on_message,
        )
    per = n // publishers
    pubs = [
        AsyncWirePublisher("127.0.0.1", port, f"bench-pub-{qos}-{retain}-{k}")
        for k in range(publishers)
    ]
    for p in pubs:
        await p.connect()
    frames = [_frames(per, qos, retain, k * per) for k in range(publishers)]
    cpu0 = sum(broker.cpu_times()[:2])
    t0 = time.perf_counter()

    async def send(p: AsyncWirePublisher, fs: list[bytes]) -> None:
        for i in range(0, len(fs), 1000):
            await p.send(fs[i : i + 1000])
        if qos:
            async with asyncio.timeout(120):
                await p.wait_pubacks(len(fs))

    await asyncio.gather(*(send(p, fs) for p, fs in zip(pubs, frames, strict=True)))
    if sub:
        async with asyncio.timeout(120):
            await done.wait()
    wall = time.perf_counter() - t0
    cpu = sum(broker.cpu_times()[:2]) - cpu0
    for p in pubs:
        await p.close()
    if session is not None:
        session.close()
    total = per * publishers
    us = 1e6 * cpu / total
    return {
        "qos": qos,
        "retained": retain,
        "subscriber": sub,
        "messages": total,
        "msgs_per_s": round(total / wall),
        "broker_cpu_us_per_msg": round(us, 2),
        "msgs_per_broker_core_s": round(1e6 / us) if us else None,
    }


async def run(messages: int, publishers: int) -> list[dict[str, Any]]:
    exe = shutil.which("mosquitto")
    if exe is None:
        raise SystemExit("mosquitto is not installed")
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        conf = Path(tmp) / "m.conf"
        conf.write_text(mosquitto_config(port).replace("log_dest stdout", "log_dest none"))
        proc = await asyncio.create_subprocess_exec(exe, "-c", str(conf))
        try:
            for _ in range(100):
                if await mqtt_handshake(port) == 0:
                    break
                await asyncio.sleep(0.05)
            broker = psutil.Process(proc.pid)
            return [
                await cell(port, broker, messages, publishers, 0, False, True),
                await cell(port, broker, messages, publishers, 1, True, True),
                await cell(port, broker, messages, publishers, 1, True, False),
            ]
        finally:
            proc.terminate()
            await proc.wait()


def main() -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.fleet.broker", description=__doc__)
    ap.add_argument("--messages", type=int, default=200_000)
    ap.add_argument("--publishers", type=int, default=4)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    rows = asyncio.run(run(args.messages, args.publishers))
    print("| cell | msgs/s end to end | mosquitto CPU us/msg | msgs/s per mosquitto core |")
    print("| --- | ---: | ---: | ---: |")
    for r in rows:
        name = f"QoS {r['qos']}{' retained' if r['retained'] else ''}" + (
            " -> 1 subscriber" if r["subscriber"] else ", no subscriber"
        )
        print(
            f"| {name} | {r['msgs_per_s']:,} | {r['broker_cpu_us_per_msg']} "
            f"| {r['msgs_per_broker_core_s']:,} |"
        )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps({"config": vars(args) | {"json": str(args.json)}, "results": rows}, indent=1)
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
