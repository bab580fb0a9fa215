"""Acceptance: shell MQTT clients in, results out, equal to a direct ONNX Runtime run."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np

from models import basicmotions
from models.backends import load_backend
from tests.edge_agent.conftest import AgentProcess, process_args


def test_mosquitto_pub_stream_matches_direct_ort(
    mosquitto: Any, repo: Path, topic_prefix: str
) -> None:
    assert shutil.which("mosquitto_pub") and shutil.which("mosquitto_sub")
    x, _ = basicmotions.load("test")
    stream = np.concatenate([x[0], x[5]])[:130]  # 130 readings -> windows ending 99..129
    agent = AgentProcess(
        process_args(
            f"{topic_prefix}-a",
            mosquitto.url,
            repo,
            topic_prefix,
            *("--model", "motion-edge", "--policy", "local-only"),
        )
    )
    try:
        agent.wait_ready()
        expected_seqs = [99, 109, 119, 129]
        sub = subprocess.Popen(
            [
                "mosquitto_sub",
                "-p",
                str(mosquitto.port),
                "-t",
                f"{topic_prefix}/results/#",
                "-C",
                str(len(expected_seqs)),
                "-W",
                "20",
                "-q",
                "1",
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        time.sleep(0.5)  # let mosquitto_sub subscribe
        lines = "".join(
            json.dumps({"ts": time.time(), "seq": i, "values": [float(v) for v in row]}) + "\n"
            for i, row in enumerate(stream)
        )
        subprocess.run(
            [
                "mosquitto_pub",
                "-p",
                str(mosquitto.port),
                "-q",
                "1",
                "-l",
                "-t",
                f"{topic_prefix}/sensors/plant-a/dev-7/imu",
            ],
            input=lines,
            text=True,
            check=True,
            timeout=20,
        )
        out, _ = sub.communicate(timeout=25)
        results = [json.loads(line) for line in out.splitlines()]
    finally:
        agent.stop()

    assert [r["seq"] for r in results] == expected_seqs
    manifest_labels = ["Standing", "Running", "Walking", "Badminton"]
    backend = load_backend(repo / "motion-edge" / "1" / "model.onnx")
    windows = np.stack([stream[s - 99 : s + 1] for s in expected_seqs]).astype(np.float32)
    direct = backend.infer({"input": windows})["probabilities"]
    for r, probs in zip(results, direct, strict=True):
        assert (r["site"], r["device"], r["stream"]) == ("plant-a", "dev-7", "imu")
        assert r["model"] == "motion-edge" and r["version"] == 1 and r["route"] == "edge"
        np.testing.assert_allclose(r["output"]["scores"], probs, rtol=1e-5, atol=1e-6)
        assert r["output"]["label"] == manifest_labels[int(np.argmax(probs))]
        lat = r["latency_ms"]
        assert set(lat) == {"total", "queue", "compute", "network", "transit"}
        # Timed from the sensor ts: the time before the agent read it is part of the total.
        assert lat["total"] >= lat["transit"] + lat["queue"] - 0.01 and lat["transit"] >= 0.0
        assert r["deadline_met"] in (True, False) and r["agent"] == f"{topic_prefix}-a"
