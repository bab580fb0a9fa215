"""Publisher cost: pre-encoded raw MQTT frames (simulators.mqtt_wire) vs a paho publisher.

    python -m benchmarks.simulators [--messages 200000] [--json reports/wire-bench.json]

Both publish the same JSON single readings (one 6-channel BasicMotions row, ~90 bytes)
to the same fresh mosquitto on 127.0.0.1, one after the other in one run. Reported per
message: wall time until every byte was handed to the kernel (QoS 0) or every PUBACK came
back (QoS 1), and the publisher's CPU time (what limits how many sensors one process can
drive). The wire publisher's frames are encoded before the clock starts, as fleet-sim and
the edge-agent load generator do each tick.
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from bus.broker import BrokerUrl, make_client
from simulators.broker import free_port, mosquitto_config
from simulators.mqtt_wire import PacketIds, WirePublisher, publish_frame


def _payloads(n: int) -> list[tuple[str, bytes]]:
    row = b"[0.1234,-0.5678,0.9012,0.3456,-0.7890,0.1234]"
    return [
        (f"sensors/s1/dev{i % 1000:05d}/imu", b'{"ts":%.6f,"seq":%d,"values":%s}' % (1.7e9, i, row))
        for i in range(n)
    ]


def bench_wire(port: int, msgs: list[tuple[str, bytes]], qos: int) -> dict[str, float]:
    ids = PacketIds()
    frames = [publish_frame(t, p, qos=qos, packet_id=ids() if qos else None) for t, p in msgs]
    with WirePublisher("127.0.0.1", port, f"bench-wire-{qos}") as pub:
        wall, cpu = time.perf_counter(), time.process_time()
        for i in range(0, len(frames), 2000):
            pub.send(frames[i : i + 2000])
        if qos:
            pub.wait_pubacks(len(frames), 60)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {"us_per_msg": 1e6 * wall / len(msgs), "cpu_us_per_msg": 1e6 * cpu / len(msgs)}


def bench_paho(port: int, msgs: list[tuple[str, bytes]], qos: int) -> dict[str, float]:
    client = make_client(
        BrokerUrl("127.0.0.1", port, False), f"bench-paho-{qos}", max_inflight=65535
    )
    done = threading.Event()
    acked = [0]

    def on_publish(*_: object) -> None:
        acked[0] += 1
        if acked[0] == len(msgs):
            done.set()

    client.on_publish = on_publish
    client.connect("127.0.0.1", port)
    client.loop_start()
    wall, cpu = time.perf_counter(), time.process_time()
    for topic, payload in msgs:
        client.publish(topic, payload, qos=qos)
    done.wait(120)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    client.loop_stop()
    client.disconnect()
    return {"us_per_msg": 1e6 * wall / len(msgs), "cpu_us_per_msg": 1e6 * cpu / len(msgs)}


def main() -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.simulators", description=__doc__)
    ap.add_argument("--messages", type=int, default=200_000)
    ap.add_argument("--json", type=Path, default=None, help="write the figures here")
    args = ap.parse_args()
    exe = shutil.which("mosquitto")
    if exe is None:
        raise SystemExit("mosquitto is not installed")
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        conf = Path(tmp) / "m.conf"
        conf.write_text(mosquitto_config(port).replace("log_dest stdout", "log_dest none"))
        broker = subprocess.Popen([exe, "-c", str(conf)])
        try:
            for _ in range(100):
                try:
                    socket.create_connection(("127.0.0.1", port), 0.2).close()
                    break
                except OSError:
                    time.sleep(0.05)
            msgs = _payloads(args.messages)
            rows = {}
            for qos in (0, 1):
                rows[f"wire qos{qos}"] = bench_wire(port, msgs, qos)
                rows[f"paho qos{qos}"] = bench_paho(port, msgs, qos)
        finally:
            broker.terminate()
            broker.wait(5)
    print(
        f"{'publisher':<12} {'wall us/msg':>12} {'cpu us/msg':>12}   ({args.messages:,} messages)"
    )
    for name, r in rows.items():
        print(f"{name:<12} {r['us_per_msg']:>12.2f} {r['cpu_us_per_msg']:>12.2f}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"messages": args.messages, "results": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
