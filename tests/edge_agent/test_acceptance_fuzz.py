"""Acceptance: 10,000 fuzzed payloads interleaved with valid readings on the same stream."""

from __future__ import annotations

import json
import random
import struct
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bus.readings import REASONS, encode_binary
from models import basicmotions
from models.backends import load_backend
from simulators.mqtt_wire import WirePublisher, publish_frame
from tests.edge_agent.conftest import AgentProcess, process_args


def _fuzz(rng: random.Random, i: int) -> bytes:
    """A payload that is invalid by construction (kind chosen by ``i``)."""
    kind = i % 12
    if kind == 0:
        return bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 64))) + b"\xff"
    if kind == 1:  # wrong shape
        return json.dumps({"seq": i, "values": [1.0] * rng.choice([1, 2, 5, 7, 12])}).encode()
    if kind == 2:
        bad = rng.choice(["NaN", "Infinity", "-Infinity", "1e39"])
        return f'{{"seq": {i}, "values": [0, 1, {bad}, 3, 4, 5]}}'.encode()
    if kind == 3:  # huge array
        return json.dumps({"seq": i, "values": [[0.5] * 6] * 5000}).encode()
    if kind == 4:  # wrong types
        return json.dumps({"seq": i, "values": ["a", None, {}, [], True, 1]}).encode()
    if kind == 5:  # deep JSON
        d = rng.randint(2000, 20000)
        return b'{"values": ' + b"[" * d + b"]" * d + b"}"
    if kind == 6:
        return json.dumps({"seq": str(i), "values": [0.0] * 6}).encode()
    if kind == 7:
        return json.dumps([{"values": [0.0] * 6}]).encode()
    if kind == 8:  # binary with a lying header
        good = encode_binary(np.ones((3, 6)), i + 10, 1.0)
        return good[: rng.randint(1, len(good) - 1)]
    if kind == 9:
        return encode_binary(np.full((2, 6), np.inf), i + 10, 1.0)
    if kind == 10:
        return struct.pack("<2sBBQdHH", b"EC", 7, 0, 1, 0.0, 1, 6) + b"\x00" * 24
    return json.dumps({"ts": "yesterday", "seq": i, "values": [0.0] * 6}).encode()


@pytest.mark.slow
def test_fuzz_is_dead_lettered_and_valid_results_stay_correct(
    mosquitto: Any, repo: Path, topic_prefix: str, subscriber: Any
) -> None:
    rng = random.Random(1234)
    n_fuzz, n_valid = 10_000, 300
    x, _ = basicmotions.load("test")
    stream = np.concatenate([x[1], x[9], x[20]])[:n_valid].astype(np.float32)
    topic = f"{topic_prefix}/sensors/s1/d1/acc"
    agent = AgentProcess(
        process_args(
            f"{topic_prefix}-f",
            mosquitto.url,
            repo,
            topic_prefix,
            *("--policy", "local-only", "--log-level", "WARNING"),
        )
    )
    agent.wait_ready()
    results = subscriber(f"{topic_prefix}/results/#")
    dead = subscriber(f"{topic_prefix}/deadletter/#", qos=0)
    pub = WirePublisher("127.0.0.1", mosquitto.port, f"{topic_prefix}-fuzzer")
    pub.connect()
    try:
        per_valid = n_fuzz // n_valid + 1
        sent_fuzz = 0
        for seq in range(n_valid):
            frames = []
            for _ in range(per_valid):
                if sent_fuzz < n_fuzz:
                    frames.append(publish_frame(topic, _fuzz(rng, sent_fuzz)))
                    sent_fuzz += 1
            valid = {"ts": time.time(), "seq": seq, "values": stream[seq].tolist()}
            frames.append(publish_frame(topic, json.dumps(valid).encode()))
            pub.send(frames)
            if seq % 20 == 0:
                time.sleep(0.02)  # a burst, not a flood: the point is validation, not speed
        assert sent_fuzz == n_fuzz
        expected = list(range(99, n_valid, 10))
        got = results.wait_for(len(expected), timeout=30)
        dead.wait_for(n_fuzz, timeout=30)
        status = agent.status()
        assert agent.proc.poll() is None, "agent died"
    finally:
        pub.close()
        agent.stop()
    assert status["deadletter"]["total"] == n_fuzz
    assert sum(status["deadletter"]["by_reason"].values()) == n_fuzz
    letters = dead.json()
    assert len(letters) == n_fuzz
    assert all(d["reason"] in REASONS and d["detail"] for d in letters)
    assert {
        "bad-json",
        "wrong-channels",
        "non-finite",
        "too-large",
        "bad-type",
        "json-too-deep",
        "bad-binary",
    } <= {d["reason"] for d in letters}
    assert [r["seq"] for r in got] == expected
    backend = load_backend(repo / "motion-edge" / "1" / "model.onnx")
    direct = backend.infer({"input": np.stack([stream[s - 99 : s + 1] for s in expected])})
    for r, probs in zip(got, direct["probabilities"], strict=True):
        np.testing.assert_allclose(r["output"]["scores"], probs, rtol=1e-5, atol=1e-6)
    assert status["totals"]["results"] == len(expected)
