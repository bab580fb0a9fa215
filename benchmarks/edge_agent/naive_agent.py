"""The baseline: the agent everyone writes first.

paho callback -> ``json.loads`` -> per-device list window -> one ONNX Runtime call per
window -> ``json.dumps`` -> publish. Same TCP_NODELAY client factory as the real agent,
so the comparison measures the agent design, not socket options.

``python -m benchmarks.edge_agent.naive_agent --broker URL --model-path model.onnx``
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from collections import deque
from collections.abc import Sequence

import numpy as np
import onnxruntime as ort

from bus.broker import BrokerUrl, make_client


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="naive-agent")
    p.add_argument("--broker", required=True)
    p.add_argument("--model-path", required=True)
    p.add_argument("--topics-filter", default="sensors/+/+/+")
    p.add_argument("--window", type=int, default=100)
    p.add_argument("--hop", type=int, default=10)
    p.add_argument("--client-id", default="naive-agent")
    p.add_argument("--qos", type=int, default=0, choices=(0, 1))
    args = p.parse_args(argv)

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(args.model_path, so, providers=["CPUExecutionProvider"])
    in_name = sess.get_inputs()[0].name
    labels = ["Standing", "Running", "Walking", "Badminton"]
    windows: dict[str, deque[list[float]]] = {}
    counts: dict[str, int] = {}
    client = make_client(BrokerUrl.parse(args.broker), args.client_id)

    def on_message(c, userdata, msg) -> None:
        reading = json.loads(msg.payload)
        topic = msg.topic
        win = windows.setdefault(topic, deque(maxlen=args.window))
        win.append(reading["values"])
        counts[topic] = counts.get(topic, 0) + 1
        if len(win) == args.window and (counts[topic] - args.window) % args.hop == 0:
            x = np.asarray([list(win)], dtype=np.float32)
            probs = sess.run(None, {in_name: x})[0][0]
            _, site, device, stream = topic.split("/")[-4:]
            result = {
                "site": site,
                "device": device,
                "stream": stream,
                "seq": reading["seq"],
                "ts": reading["ts"],
                "output": {"label": labels[int(probs.argmax())], "scores": probs.tolist()},
            }
            c.publish(f"results/{site}/{device}/{stream}", json.dumps(result))

    def on_connect(c, userdata, flags, rc, props=None) -> None:
        c.subscribe(args.topics_filter, args.qos)
        print("naive-agent ready", flush=True)

    client.on_message = on_message
    client.on_connect = on_connect
    url = BrokerUrl.parse(args.broker)
    client.connect(url.host, url.port)
    signal.signal(signal.SIGTERM, lambda *a: client.disconnect())
    client.loop_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
