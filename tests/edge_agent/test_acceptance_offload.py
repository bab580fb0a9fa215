"""Acceptance: overload offloads to a real offload-server; a dying cloud loses nothing."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bus.readings import encode_binary
from simulators.mqtt_wire import WirePublisher, publish_frame
from tests.edge_agent.conftest import AgentProcess, OffloadServer, install_heavy_model, process_args


def _agent(mosquitto: Any, repo: Path, prefix: str, name: str, *extra: str) -> AgentProcess:
    a = AgentProcess(
        process_args(
            f"{prefix}-{name}",
            mosquitto.url,
            repo,
            prefix,
            *("--log-level", "WARNING", "--slo-ms", "100", *extra),
        )
    )
    a.wait_ready()
    return a


def _blast(
    port: int, prefix: str, rate: float, seconds: float, devices: int = 50, during: Any = None
) -> int:
    """Whole-window binary messages at ``rate``/s; returns how many were sent."""
    rng = np.random.default_rng(11)
    windows = rng.normal(size=(16, 100, 6)).astype(np.float32)
    pub = WirePublisher("127.0.0.1", port, f"{prefix}-load-{time.monotonic_ns()}")
    pub.connect()
    sent, start = 0, time.monotonic()
    seqs = [99] * devices
    try:
        while (el := time.monotonic() - start) < seconds:
            if during is not None and el >= seconds / 2:
                during()
                during = None
            frames = []
            for _ in range(int(rate * el) - sent):
                d = sent % devices
                frames.append(
                    publish_frame(
                        f"{prefix}/sensors/s/d{d}/w".encode(),
                        encode_binary(windows[sent % 16], seqs[d], time.time()),
                    )
                )
                seqs[d] += 100
                sent += 1
            if frames:
                pub.send(frames)
            time.sleep(0.005)
    finally:
        pub.close()
    return sent


def _settle(agent: AgentProcess, sent: int, timeout: float = 30.0) -> dict[str, Any]:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        st = agent.status()
        if st["totals"]["results"] >= sent:
            return st
        time.sleep(0.2)
    return agent.status()


@pytest.mark.slow
def test_overload_offloads_and_beats_local_only(
    mosquitto: Any, repo: Path, topic_prefix: str, subscriber: Any
) -> None:
    install_heavy_model(repo, repeats=400)
    cloud = OffloadServer(repo)
    rate, seconds = 1200.0, 3.0
    report: dict[str, dict[str, Any]] = {}
    try:
        for policy in ("slo-aware", "local-only"):
            prefix = f"{topic_prefix}{policy[:2]}"
            results = subscriber(f"{prefix}/results/#", qos=0)
            agent = _agent(
                mosquitto,
                repo,
                prefix,
                policy,
                "--model",
                "motion-heavy",
                "--policy",
                policy,
                "--cloud",
                cloud.target,
                "--cloud-model",
                "motion-cloud",
                "--max-batch",
                "32",
            )
            try:
                sent = _blast(mosquitto.port, prefix, rate, seconds)
                st = _settle(agent, sent)
                got = results.wait_for(sent, timeout=10)
            finally:
                agent.stop()
            report[policy] = {
                "sent": sent,
                "results": len(got),
                "attainment": st["slo_attainment"],
                "offload_share": st["offload_share"],
                "routes": st["routes"],
            }
    finally:
        cloud.kill()
    print("\noverload", rate, "windows/s for", seconds, "s:", report)
    for r in report.values():
        assert r["results"] == r["sent"], report  # every request answered exactly once
    assert report["slo-aware"]["offload_share"] > 0.2, report
    assert report["local-only"]["offload_share"] == 0.0
    assert report["slo-aware"]["attainment"] > report["local-only"]["attainment"] + 0.2, report


@pytest.mark.slow
def test_cloud_killed_mid_run_everything_answered_locally(
    mosquitto: Any, repo: Path, topic_prefix: str, subscriber: Any
) -> None:
    cloud = OffloadServer(repo)
    results = subscriber(f"{topic_prefix}/results/#", qos=0)
    agent = _agent(
        mosquitto,
        repo,
        topic_prefix,
        "k",
        "--policy",
        "cloud-only",
        "--cloud",
        cloud.target,
        "--cloud-model",
        "motion-cloud",
    )
    try:
        sent = _blast(mosquitto.port, topic_prefix, 400.0, 3.0, during=cloud.kill)
        st = _settle(agent, sent)
        got = results.wait_for(sent, timeout=10)
    finally:
        agent.stop()
        cloud.kill()
    keys = {(r["device"], r["seq"]) for r in got}
    assert len(got) == len(keys) == sent, (len(got), len(keys), sent)
    routes = {r["route"] for r in got}
    assert routes == {"edge", "cloud"}, routes
    assert st["totals"]["fallbacks"] > 0 or st["routes"]["local"] > 0
    assert st["totals"]["errors"] == 0
    assert all(r["output"]["label"] is not None for r in got)
