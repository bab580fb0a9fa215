"""A user's rank-2 models served by a real ``edge-agent`` process: ``[N, channels]``
(window 1, readings as JSON objects keyed by channel name) and ``[N, window*channels]``
(flattened windows). Packed and installed with the CLI; every result equals a direct
ONNX Runtime run on the same inputs (within 1e-5)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

from cloud_gateway.cli import main as gateway_main
from tests.edge_agent.conftest import AgentProcess, Subscriber, process_args, publisher
from tests.models.user_models import classifier

FEATURES = ("temperature", "pressure", "vibration", "current", "speed")


def _pack_and_install(tmp_path: Path, model: Path, *fields: str) -> Path:
    key = tmp_path / "keys" / "user.key"
    out = tmp_path / "bundles"
    assert (
        gateway_main(["models", "pack", str(model), "--out", str(out), "--key", str(key), *fields])
        == 0
    )
    bundle = sorted(out.glob("*.bundle"))[-1]
    repo = tmp_path / "repo"
    assert (
        gateway_main(
            [
                "models",
                "install",
                str(bundle),
                "--repository",
                str(repo),
                "--trusted-keys",
                str(key.with_suffix(".pub")),
            ]
        )
        == 0
    )
    return repo


def _serve(mosquitto: Any, repo: Path, prefix: str, model: str) -> AgentProcess:
    agent = AgentProcess(process_args("user-1", mosquitto.url, repo, prefix, "--model", model))
    agent.wait_ready()
    return agent


def _scores(results: list[dict[str, Any]]) -> dict[int, np.ndarray]:
    assert all(r.get("error") is None and r["output"].get("error") is None for r in results), (
        results
    )
    return {r["seq"]: np.asarray(r["output"]["scores"], dtype=np.float64) for r in results}


def test_feature_vector_model_answers_readings_keyed_by_channel_name(
    tmp_path: Path, mosquitto: Any, topic_prefix: str, capsys: pytest.CaptureFixture[str]
) -> None:
    model = classifier(tmp_path / "press.onnx", features=5, classes=2, seed=7)
    fields = ("--name", "press", "--version", "1", "--channels", ",".join(FEATURES))
    repo = _pack_and_install(
        tmp_path, model, *fields, "--sample-rate-hz", "1", "--labels", "ok,fault"
    )
    agent = _serve(mosquitto, repo, topic_prefix, "press")
    sub = Subscriber(mosquitto.url, f"{topic_prefix}/results/#")
    pub = publisher(mosquitto.url)
    try:
        x = np.random.default_rng(11).standard_normal((6, 5)).astype(np.float32)
        for i, row in enumerate(x, start=1):
            # Half the readings as objects keyed by channel name (in shuffled order), half as lists.
            values: Any = (
                {name: float(row[j]) for j, name in reversed(list(enumerate(FEATURES)))}
                if i % 2
                else [float(v) for v in row]
            )
            payload = json.dumps({"ts": time.time(), "seq": i, "values": values})
            pub.publish(
                f"{topic_prefix}/sensors/site-1/press-3/health", payload, qos=1
            ).wait_for_publish()
        results = sub.wait_for(6, timeout=20)
        assert len(results) == 6, agent.lines[-20:]
        got = _scores(results)
        (want,) = ort.InferenceSession(str(model)).run(None, {"x": x})
        for i in range(1, 7):
            np.testing.assert_allclose(got[i], want[i - 1], atol=1e-5)
        assert {r["output"]["label"] for r in results} <= {"ok", "fault"}
        assert {r["model"] for r in results} == {"press"}
    finally:
        pub.disconnect()
        sub.close()
        assert agent.stop() == 0


def test_flattened_window_model_gets_row_major_windows(
    tmp_path: Path, mosquitto: Any, topic_prefix: str
) -> None:
    model = classifier(tmp_path / "flat.onnx", features=12, classes=3, seed=9)
    fields = ("--name", "flat", "--version", "1", "--channels", "ax,ay,az", "--window", "4")
    repo = _pack_and_install(
        tmp_path, model, *fields, "--sample-rate-hz", "50", "--labels", "a,b,c"
    )
    agent = _serve(mosquitto, repo, topic_prefix, "flat")
    sub = Subscriber(mosquitto.url, f"{topic_prefix}/results/#")
    pub = publisher(mosquitto.url)
    try:
        windows = np.random.default_rng(12).standard_normal((3, 4, 3)).astype(np.float32)
        for k, window in enumerate(windows):
            seq = 4 * (k + 1)  # the seq of the window's last row; rows before count down
            payload = json.dumps({"ts": time.time(), "seq": seq, "values": window.tolist()})
            pub.publish(
                f"{topic_prefix}/sensors/site-1/arm-1/imu", payload, qos=1
            ).wait_for_publish()
        results = sub.wait_for(3, timeout=20)
        assert len(results) == 3, agent.lines[-20:]
        got = _scores(results)
        (want,) = ort.InferenceSession(str(model)).run(None, {"x": windows.reshape(3, 12)})
        for k in range(3):
            np.testing.assert_allclose(got[4 * (k + 1)], want[k], atol=1e-5)
    finally:
        pub.disconnect()
        sub.close()
        assert agent.stop() == 0
