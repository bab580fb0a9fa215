"""The edge-agent container of the cpu overlay, run as a real process with exactly the
rendered command and environment (mount paths moved to a temp dir, addresses to
127.0.0.1): it comes up ready on the declared port behind the site broker's real auth and
ACL, answers a sensor window with a result, and stops cleanly on SIGTERM."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from models.recipes import build_all
from tests.conftest import free_port
from tests.manifests.brokers import PASSWORDS, Client, start_broker, stop, tls_files
from tests.manifests.pods import http_status, local_pod, start, terminate, wait_http


@pytest.mark.slow
def test_agent_container_runs_as_deployed(tmp_path: Path) -> None:
    broker = start_broker("edge-cpu", tmp_path / "broker")
    pod = local_pod("edge-cpu", "edge-agent", tmp_path / "pod")
    built = build_all(tmp_path / "build", names=("motion-edge",))
    shutil.copytree(
        built.repository, pod.volume("/var/lib/edgecloud/repository"), dirs_exist_ok=True
    )
    shutil.copy(built.public_key, pod.volume("/etc/edgecloud/trusted-keys"))
    (pod.volume("/etc/edgecloud/gateway") / "token").write_text("agent-token\n")
    tls_files(pod.volume("/etc/edgecloud/tls"))
    http_port = free_port()
    pod.env |= {
        "EDGE_AGENT_ID": "node-1",  # spec.nodeName
        "EDGE_BROKER": f"mqtt://edge-agent:{PASSWORDS['edge-agent']}@127.0.0.1:{broker.ports[1883]}",
        "EDGE_HTTP_HOST": "127.0.0.1",
        "EDGE_HTTP_PORT": str(http_port),
        "EDGE_CLOUD": f"127.0.0.1:{free_port()}",
        "EDGE_GATEWAY_URL": f"http://127.0.0.1:{free_port()}",
    }
    log = tmp_path / "agent.log"
    proc = start(pod, log)
    viewer = sensor = None
    try:
        url = f"http://127.0.0.1:{http_port}"
        wait_http(proc, f"{url}/readyz", log)
        assert http_status(f"{url}/healthz") == 200
        viewer = Client(broker.url("viewer"), "viewer-pod")
        viewer.subscribe("results/#")
        sensor = Client(broker.url("sensor"), "sensor-pod")
        window = np.random.default_rng(0).normal(size=(100, 6)).round(4).tolist()
        sensor.publish(
            "sensors/site-1/dev1/acc",
            json.dumps({"ts": time.time(), "seq": 99, "values": window}).encode(),
        )
        topic, payload, _ = viewer.expect(timeout=15)
        result = json.loads(payload)
        assert topic == "results/site-1/dev1/acc"
        assert (result["agent"], result["model"], result["route"]) == (
            "node-1",
            "motion-edge",
            "edge",
        )
        assert terminate(proc) == 0, log.read_text()  # within terminationGracePeriodSeconds
    finally:
        for client in (viewer, sensor):
            if client is not None:
                client.close()
        terminate(proc, grace=5)
        stop(broker)
