"""Raw-socket load generator: JSON readings as pre-framed MQTT PUBLISH packets.

One 6-channel reading per message, ``--devices`` devices round-robin, QoS 0 (or 1 with
``--qos 1``: the broker's PUBACKs are counted and awaited at the end). Every
millisecond the frames due are built (``simulators.mqtt_wire.publish_frame``, ~2 us) and
written with one ``sendall``; ``ts`` is the send time, so the collector measures
publish -> result latency. Prints a JSON summary (messages per device) on exit.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence

import numpy as np

from simulators.mqtt_wire import PacketIds, WirePublisher, publish_frame


def _rows(n: int = 512) -> list[bytes]:
    rng = np.random.default_rng(7)
    data = rng.normal(0.0, 1.0, size=(n, 6)).astype(np.float32)
    return [("[" + ",".join(f"{v:.5f}" for v in row) + "]").encode() for row in data]


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="edge-loadgen")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--rate", type=float, required=True, help="messages per second")
    p.add_argument("--duration", type=float, default=5.0)
    p.add_argument("--devices", type=int, default=100)
    p.add_argument("--sites", type=int, default=1, help="devices spread over this many sites")
    p.add_argument("--prefix", default="sensors")
    p.add_argument("--qos", type=int, default=0, choices=(0, 1))
    p.add_argument(
        "--prefill",
        type=int,
        default=99,
        help="readings per device sent (paced, untimed) before the timed phase, so every "
        "timed reading can complete a window",
    )
    args = p.parse_args(argv)

    rows = _rows()
    nrows = len(rows)
    topics = [f"{args.prefix}/s{d % args.sites}/d{d}/acc".encode() for d in range(args.devices)]
    pub = WirePublisher(args.host, args.port, f"loadgen-{os.getpid()}")
    pub.connect()
    # WirePublisher uses a 1 s socket timeout; a saturated broker can stall a send longer
    # than that, and a benchmark must report that as lost rate, not crash.
    pub._sock.settimeout(30.0)  # type: ignore[union-attr]
    devices = args.devices
    ids = PacketIds()
    qos = args.qos

    def frame(topic: bytes, payload: bytes) -> bytes:
        return publish_frame(topic, payload, qos=qos, packet_id=ids() if qos else None)

    for k in range(args.prefill):
        ts = time.time()
        frames = []
        for d in range(devices):
            payload = b'{"ts":%.6f,"seq":%d,"values":%s}' % (ts, k, rows[k % nrows])
            frames.append(frame(topics[d], payload))
        pub.send(b"".join(frames))
        time.sleep(devices / 20000.0)
    seqs = [args.prefill] * devices
    time.sleep(0.5)
    sent = 0
    start = time.monotonic()
    while True:
        el = time.monotonic() - start
        if el >= args.duration:
            break
        due = int(args.rate * el) - sent
        if due > 0:
            ts = time.time()
            frames = []
            for _ in range(due):
                d = sent % devices
                s = seqs[d]
                seqs[d] = s + 1
                payload = b'{"ts":%.6f,"seq":%d,"values":%s}' % (ts, s, rows[s % nrows])
                frames.append(frame(topics[d], payload))
                sent += 1
            pub.send(b"".join(frames))
        time.sleep(0.0005)
    elapsed = time.monotonic() - start
    if qos and not pub.wait_pubacks(sent + args.prefill * devices, timeout=30.0):
        print(f"loadgen: only {pub.pubacks} PUBACKs arrived", file=sys.stderr)
    pub.close()
    print(json.dumps({"sent": sent, "elapsed": elapsed, "per_device": seqs}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
