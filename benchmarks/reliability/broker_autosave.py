"""``python -m benchmarks.reliability.broker_autosave``: what crash-safe persistence costs.

mosquitto 2.0 persists by rewriting its whole database file. ``autosave_interval 30``
(the old setting) does it every 30 s, so ``kill -9`` loses up to 30 s of sessions and
queued QoS-1 messages; ``autosave_on_changes true`` + ``autosave_interval 1`` (shipped
now) does it after every main-loop pass that changed something. This measures, side by
side, QoS-1 readings through one broker for each setting:

* ``online``: a persistent QoS-1 subscriber (the agent) is connected and keeps up, so the
  database stays small (sessions, subscriptions, retained fleet state);
* ``queueing``: the subscriber's session is offline, so every reading is queued in the
  database and each save rewrites all of them (the cost grows with the queue, bounded by
  ``max_queued_messages``).

Columns: achieved publish rate (PUBACKs/s, 100 in flight), broker CPU seconds per 1,000
readings, bytes the broker wrote per reading (``wchar`` of ``/proc/<pid>/io``: the
subscriber's socket, ~100 B, plus the persistence file).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from benchmarks.reliability.harness import Broker
from bus.broker import BrokerUrl, make_client

SETTINGS = {
    "persistence false": "persistence false\n",
    "autosave_interval 30 (old)": "persistence true\nautosave_interval 30\n",
    "autosave_on_changes, interval 1": (
        "persistence true\nautosave_on_changes true\nautosave_interval 1\n"
    ),
    "autosave_on_changes, interval 100 (shipped)": (
        "persistence true\nautosave_on_changes true\nautosave_interval 100\n"
    ),
    "autosave_on_changes, interval 1000": (
        "persistence true\nautosave_on_changes true\nautosave_interval 1000\n"
    ),
}


def _cpu_and_writes(pid: int) -> tuple[float, int]:
    import os

    stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    cpu = (int(stat[11]) + int(stat[12])) / ticks
    io = dict(line.split(": ") for line in Path(f"/proc/{pid}/io").read_text().strip().splitlines())
    return cpu, int(io["wchar"])


def run_one(workdir: Path, conf: str, mode: str, n: int) -> dict[str, Any]:
    queues = "max_queued_messages 1000000\nmax_inflight_messages 0\n"
    broker = Broker(workdir, persistence=conf + queues)
    url = BrokerUrl.parse(broker.url)
    got = threading.Semaphore(0)
    sub = make_client(url, "bench-agent", clean_session=False)
    sub.on_message = lambda *a: got.release()
    subscribed = threading.Event()
    sub.on_subscribe = lambda *a: subscribed.set()
    sub.on_connect = lambda c, *a: c.subscribe("bench/#", 1)
    sub.connect(url.host, url.port)
    sub.loop_start()
    subscribed.wait(5)
    if mode == "queueing":
        sub.disconnect()
        sub.loop_stop()
    acked = threading.Semaphore(0)
    pub = make_client(url, "bench-sensor", clean_session=False, max_inflight=100)
    pub.on_publish = lambda *a: acked.release()
    pub.connect(url.host, url.port)
    pub.loop_start()
    body = json.dumps({"ts": time.time(), "seq": 0, "values": [0.1] * 6})
    assert broker.proc is not None
    cpu0, w0 = _cpu_and_writes(broker.proc.pid)
    t0 = time.perf_counter()
    for i in range(n):
        pub.publish(f"bench/s1/d{i % 10}/acc", body, qos=1)
    for _ in range(n):
        acked.acquire(timeout=60)
    elapsed = time.perf_counter() - t0
    cpu1, w1 = _cpu_and_writes(broker.proc.pid)
    if mode == "queueing":
        sub.reconnect()
        sub.loop_start()
    received = sum(1 for _ in range(n) if got.acquire(timeout=30))
    pub.disconnect()
    pub.loop_stop()
    sub.disconnect()
    sub.loop_stop()
    broker.stop()
    return {
        "setting": next(k for k, v in SETTINGS.items() if v == conf),
        "mode": mode,
        "readings": n,
        "received": received,
        "publish_per_s": round(n / elapsed),
        "broker_cpu_ms_per_1000": round((cpu1 - cpu0) * 1000 / n * 1000, 1),
        "bytes_written_per_reading": round((w1 - w0) / n),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.reliability.broker_autosave")
    ap.add_argument("--readings", type=int, default=20000)
    ap.add_argument("--json", type=Path, default=Path("broker-autosave.json"))
    args = ap.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory(prefix="autosave-") as tmp:
        for i, conf in enumerate(SETTINGS.values()):
            for mode in ("online", "queueing"):
                rows.append(run_one(Path(tmp) / f"{i}-{mode}", conf, mode, args.readings))
    cols = list(rows[0])
    widths = [max(len(c), *(len(str(r[c])) for r in rows)) for c in cols]
    print("| " + " | ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in rows:
        print(
            "| " + " | ".join(str(r[c]).ljust(w) for c, w in zip(cols, widths, strict=True)) + " |"
        )
    args.json.write_text(json.dumps({"rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
