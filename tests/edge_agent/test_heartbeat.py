"""Heartbeat on fleet/{agent}/status (contract fields) and the retained last will."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.edge_agent.conftest import AgentProcess, Subscriber


def test_heartbeat_fields_and_last_will(mosquitto: Any, repo: Path, topic_prefix: str) -> None:
    agent_id = f"{topic_prefix}-hb"
    topic = f"{topic_prefix}/fleet/{agent_id}/status"
    sub = Subscriber(mosquitto.url, topic)
    agent = AgentProcess(
        [
            "--agent-id",
            agent_id,
            "--site",
            "plant-9",
            "--broker",
            mosquitto.url,
            "--repository",
            str(repo),
            "--model",
            "motion-edge",
            "--topic-prefix",
            topic_prefix,
            "--topics-filter",
            f"{topic_prefix}/sensors/+/+/+",
            "--http-port",
            "0",
            "--heartbeat-s",
            "0.3",
        ]
    )
    try:
        agent.wait_ready()
        beats = sub.wait_for(2, timeout=10)
        hb = beats[-1]
        assert hb["agent_id"] == agent_id and hb["site"] == "plant-9" and hb["online"] is True
        entry = hb["models"]["motion-edge"]
        assert list(hb["models"]) == ["motion-edge"]
        assert (entry["version"], entry["state"], entry["topics"]) == (1, "serving", None)
        assert set(entry["metrics"]) == set(hb["metrics"])  # what the gates judge per model
        assert set(hb["update"]) == {"rollout_id", "model", "version", "state", "reason"}
        assert hb["health"] == {"ready": True, "broker": True, "cloud": "none"}
        assert hb["cloud"]["configured"] is False and hb["cloud"]["breaker"] == "none"
        assert set(hb["metrics"]) == {
            "inferences",
            "errors",
            "nan_outputs",
            "p50_ms",
            "p99_ms",
            "error_rate",
            "slo_attainment",
            "offload_share",
            "results",
            "deadline_met",
        }
        # The configuration twin: flags only until the gateway sends a config section.
        assert hb["config"]["version"] == 0 and hb["config"]["state"] == "ok"
        assert hb["config"]["effective"]["heartbeat_s"] == 0.3
        n = len(sub.messages)
        agent.stop("kill")  # no goodbye: the broker publishes the last will
        will = sub.wait_for(n + 1, timeout=60)[-1]
        assert will == {"agent_id": agent_id, "site": "plant-9", "online": False}
    finally:
        sub.close()
        agent.stop()
    late = Subscriber(mosquitto.url, topic)  # retained: a new dashboard sees "offline"
    try:
        assert json.loads(late.wait_for(1, timeout=5) and late.messages[0][1])["online"] is False
    finally:
        late.close()
