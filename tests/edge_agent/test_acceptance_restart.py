"""Acceptance: the agent restarts mid-stream at QoS 1 and no reading is lost."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.edge_agent.conftest import AgentProcess, process_args, publisher, reading


@pytest.mark.slow
def test_restart_mid_stream_loses_no_reading(
    mosquitto: Any, repo: Path, topic_prefix: str, subscriber: Any, tmp_path: Path
) -> None:
    streams = [f"{topic_prefix}/sensors/s1/d{i}/acc" for i in range(3)]
    n = 400
    args = process_args(
        f"{topic_prefix}-r",
        mosquitto.url,
        repo,
        topic_prefix,
        *("--policy", "local-only", "--db-path", str(tmp_path / "edge.db")),
        *("--log-level", "WARNING"),
    )
    results = subscriber(f"{topic_prefix}/results/#")
    pub = publisher(mosquitto.url)
    rng = np.random.default_rng(3)
    agent = AgentProcess(args)
    agent.wait_ready()
    restarted: AgentProcess | None = None
    try:
        for seq in range(n):
            if seq == 150:
                assert agent.stop("term") == 0  # graceful: drains, saves open windows
            if seq == 250:
                restarted = AgentProcess(args)  # readings 150..249 waited in the broker
                restarted.wait_ready()
            infos = [pub.publish(t, reading(seq, rng.normal(size=6)), qos=1) for t in streams]
            if seq % 25 == 0:
                for info in infos:
                    info.wait_for_publish(5)
            time.sleep(0.002)
        expected = list(range(99, n, 10))
        got = results.wait_for(len(expected) * len(streams), timeout=30)
        assert restarted is not None
        status = restarted.status()
    finally:
        pub.disconnect()
        pub.loop_stop()
        if restarted is not None:
            restarted.stop()
        agent.stop()
    for t in streams:
        device = t.split("/")[-2]
        seqs = sorted(r["seq"] for r in got if r["device"] == device)
        assert seqs == expected, f"{device}: missing {sorted(set(expected) - set(seqs))}"
    assert status["streams"]["missing"] == 0 and status["streams"]["gaps"] == 0
    assert status["totals"]["readings"] >= (n - 150) * len(streams)
