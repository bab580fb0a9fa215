"""The gateway SIGKILLed mid-rollout (docs/reliability.md, ``gateway-sigkill``).

Real processes: mosquitto with the password file and ACL generated from the gateway's
fleet registry, ``cloud-gateway serve`` on SQLite, three enrolled ``edge-agent``s with
their stores, QoS-1 sensors. The gateway is killed as soon as wave 2 of a three-wave
canary is issued and restarted on the same database; the rollout must resume and
finish with every wave issued once, every agent swapped to v2 exactly once and judged,
and no reading lost on either path.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.reliability.rollout import run_gateway_kill


@pytest.mark.slow
def test_rollout_survives_a_gateway_sigkill_mid_wave(tmp_path: Path) -> None:
    row = run_gateway_kill(tmp_path, readings=900, rate=50.0)
    notes = row["notes"]
    assert notes["killed_in_wave"] == 2 and notes["gateway_starts"] == 2
    assert notes["rollout_state"] == "succeeded", notes["rollout_reason"]
    assert notes["waves_issued"] == [1, 1, 1]
    agents = list(notes["final_versions"])
    assert len(agents) == 3
    assert notes["v2_issues_per_agent"] == dict.fromkeys(agents, 1)
    assert notes["v2_swaps_per_agent"] == dict.fromkeys(agents, 1)
    assert notes["final_versions"] == {a: [2] for a in agents}
    assert notes["verdicts"] == dict.fromkeys(agents, "pass")
    assert row["results_expected"] > 0
    assert row["live_lost"] == 0 and row["durable_lost"] == 0, notes.get("durable_missing")
    assert row["durable_duplicates"] == 0


@pytest.mark.slow
def test_an_agent_killed_mid_swap_comes_back_whole_and_converges(tmp_path: Path) -> None:
    row = run_gateway_kill(tmp_path, readings=900, rate=50.0, kill="agent-mid-swap")
    notes = row["notes"]
    on_disk = notes["repository_at_kill"]
    # Back on one whole version: the one its repository's active pointer named.
    assert notes["restarted_on"] == on_disk["active"] and on_disk["active"] in (1, 2)
    assert notes["rollout_state"] == "succeeded", notes["rollout_reason"]
    agents = list(notes["final_versions"])
    assert notes["final_versions"] == {a: [2] for a in agents}
    assert notes["verdicts"] == dict.fromkeys(agents, "pass")
    assert row["live_lost"] == 0 and row["durable_lost"] == 0, notes.get("durable_missing")
