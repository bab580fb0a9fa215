"""docs/own-model.md runs as written: its ``sh`` blocks, in order, in one bash, against a
real mosquitto, ``cloud-gateway serve`` and ``edge-agent`` on free loopback ports (the doc
reads its ports and working directory from the environment variables it defines)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort

from tests.conftest import free_port

DOC = Path(__file__).resolve().parents[2] / "docs" / "own-model.md"
CHANNELS = ("temperature", "pressure", "vibration", "current", "speed")


def shell_blocks(text: str) -> list[str]:
    return re.findall(r"^```sh\n(.*?)^```$", text, flags=re.S | re.M)


def test_the_doc_has_its_steps_in_sh_blocks() -> None:
    blocks = shell_blocks(DOC.read_text())
    joined = "\n".join(blocks)
    for step in (
        "cloud-gateway models pack",
        "cloud-gateway serve",
        "edge-agent --agent-id",
        "cloud-gateway models push",
        "cloud-gateway rollout start",
        "mosquitto_sub",
        "mosquitto_pub",
    ):
        assert step in joined, step
    assert "--model" not in joined, "the agent starts with no model"
    readme = (DOC.parents[1] / "README.md").read_text()
    assert "(docs/own-model.md)" in readme


def test_own_model_doc_runs_as_written(tmp_path: Path) -> None:
    blocks = shell_blocks(DOC.read_text())
    # Markers between blocks say which step failed; -e stops at the first failing command.
    script = "set -euo pipefail\n" + "".join(
        f"echo '>>> block {i + 1}' >&2\n{block}" for i, block in enumerate(blocks)
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_", "EDGE_"))}
    env.update(
        WORK=str(tmp_path / "work"),
        MQTT_PORT=str(free_port()),
        GATEWAY_PORT=str(free_port()),
        EDGE_HTTP_PORT=str(free_port()),
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        PYTHONPATH=os.pathsep.join(sys.path),
    )
    proc = subprocess.Popen(
        ["bash", "-c", script],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group: the doc's servers die with it
    )
    try:
        out, err = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
    work = tmp_path / "work"
    logs = {
        name: (work / name).read_text()[-2000:]
        for name in ("edge-agent.log", "gateway.log")
        if (work / name).exists()
    }
    step = re.findall(r">>> block (\d+)", err)
    assert proc.returncode == 0, (
        f"doc failed in sh block {step[-1] if step else '?'} (rc {proc.returncode})\n"
        f"stdout:\n{out[-3000:]}\nstderr:\n{err[-3000:]}\nlogs: {logs}"
    )
    assert "created signing key keys/signing.key (public key: keys/signing.pub)" in out
    assert "bundles/press-health-1.bundle" in out
    # Three results, equal to a direct ONNX Runtime run on the published values.
    lines = (work / "results.txt").read_text().splitlines()
    assert len(lines) == 3, lines
    session = ort.InferenceSession(str(work / "press.onnx"))
    for line in lines:
        topic, payload = line.split(" ", 1)
        assert topic == "results/site-1/press-7/health"
        result = json.loads(payload)
        assert result["model"] == "press-health" and result["version"] == 1
        i = result["seq"]
        x = np.array([[float(f"0.{i}"), 1.0, float(f"0.{i * 3}"), 0.5, 0.5]], np.float32)
        (want,) = session.run(None, {"features": x})
        np.testing.assert_allclose(result["output"]["scores"], want[0], atol=1e-5)
        assert result["output"]["label"] == ("ok", "fault")[int(np.argmax(want[0]))]
    assert {json.loads(line.split(" ", 1)[1])["output"]["label"] for line in lines} == {
        "ok",
        "fault",
    }
