"""The report folder from known figures: summary table, raw JSON, four PNG plots."""

from __future__ import annotations

import json
from pathlib import Path

from simulators.collector import ResultColumns
from simulators.metrics import analyze
from simulators.report import write_report
from simulators.runner import RunResult
from simulators.scenario import load_scenario


def _columns() -> ResultColumns:
    r = ResultColumns()
    start = 1000.0
    for k in range(40):  # 2 streams x 20 windows over 4 s, v1 then v2, some offloaded
        stream = f"site-0/dev{k % 2:05d}/imu"
        seq = 99 + 10 * (k // 2)
        ts = start + k * 0.1
        r.recv.append(ts + (0.02 if k % 5 else 0.15))
        r.ts.append(ts)
        r.stream.append(stream)
        r.seq.append(seq)
        r.route.append("cloud" if k % 4 == 0 else "edge")
        r.version.append(1 if k < 20 else 2)
        r.model.append("motion-edge")
        r.agent.append("agent-0")
        r.deadline_met.append(True)
        r.agent_ms.append(3.0)
    return r


def test_report_folder(tmp_path: Path) -> None:
    r = _columns()
    published = {"site-0/dev00000/imu": 290, "site-0/dev00001/imu": 290}
    figures = analyze(r, published, window=100, hop=10, slo_ms=100, start=1000.0, burst=(1, 2))
    assert figures["loss"]["missing"] == 0 and figures["results"] == 40
    assert figures["slo_attainment"] == 32 / 40 and figures["offload_share"] == 10 / 40
    figures.update(
        edge_cpu_s=1.0, edge_cpu_s_per_1k=25.0, wan_bytes_up=10, wan_bytes_down=5,
        agent_versions={"agent-0": {"motion-edge": 2}}, rollouts=[], late_ticks=0,
        events=[{"t": 1.0, "kind": "rollout-started", "id": "r1"}], sensor_rate_per_s=[10] * 4,
    )  # fmt: skip
    result = RunResult(load_scenario("demo"), figures, raw={"results": r.to_dict()})
    result.checks = {"lost <= 0": True}
    out = write_report(result, tmp_path / "rep")
    summary = (out / "summary.md").read_text()
    assert "| SLO attainment (<= 100 ms end to end) | 80.00% |" in summary
    assert "| lost / duplicates | 0 / 0 |" in summary and "PASS: lost <= 0" in summary
    for png in ("latency.png", "offload.png", "throughput.png", "versions.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"
        assert f"]({png})" in summary
    raw = json.loads((out / "raw.json").read_text())
    assert raw["figures"]["results"] == 40 and len(raw["raw"]["results"]["seq"]) == 40


def _demo_run() -> RunResult:
    """The demo scenario's timeline (burst at 20 s for 12 s, rollout at 35 s) with a
    minute of results from two agents, and the gateway's record of the rollout."""
    sc = load_scenario("demo")
    r = ResultColumns()
    start = 1_796_278_600.0
    for k in range(600):  # 60 s at 10 windows/s over 2 agents
        ts = start + k * 0.1
        t = k * 0.1
        burst = 20 <= t < 32
        r.recv.append(ts + (0.09 if burst else 0.02))
        r.ts.append(ts)
        r.stream.append(f"site-0/dev{k % 2:05d}/imu")
        r.seq.append(99 + 10 * (k // 2))
        r.route.append("cloud" if burst and k % 2 else "edge")
        r.version.append(2 if t >= 40 else 1)
        r.model.append("motion-edge")
        r.agent.append(f"agent-{k % 2}")
        r.deadline_met.append(True)
        r.agent_ms.append(3.0)
    published = {"site-0/dev00000/imu": 3090, "site-0/dev00001/imu": 3090}
    figures = analyze(r, published, window=100, hop=10, slo_ms=100, start=start, burst=(20, 32))
    created = start + 35.4  # the gateway's wall clock when the rollout was created
    gate = {"verdicts": {"agent-0": {"state": "pass", "gate": None, "reason": "p99 ok"}}}
    figures.update(
        edge_cpu_s=1.0, edge_cpu_s_per_1k=2.0, agent_versions={"agent-0": {"motion-edge": 2},
        "agent-1": {"motion-edge": 2}}, late_ticks=0, sensor_rate_per_s=[100] * 60,
        events=[
            {"t": 35.4, "kind": "rollout-started", "id": "ro-1", "model": "motion-edge",
             "version": 2},
            {"t": 49.0, "kind": "rollout-succeeded", "id": "ro-1", "reason": None},
        ],
        rollouts=[{
            "id": "ro-1", "model": "motion-edge", "version": 2, "state": "succeeded",
            "reason": None, "created_at": created, "finished_at": created + 13.6,
            "strategy": "canary", "gates": {"max_p99_ratio": 5.0},
            "events": [
                {"ts": created, "kind": "started", "detail": {"targets": 2}},
                {"ts": created + 0.5, "kind": "wave-issued", "detail": {"wave": 1}},
                {"ts": created + 6.5, "kind": "wave-passed", "detail": {"wave": 1, "gate": gate}},
                {"ts": created + 7.0, "kind": "wave-issued", "detail": {"wave": 2}},
                {"ts": created + 13.0, "kind": "wave-passed", "detail": {"wave": 2, "gate": gate}},
                {"ts": created + 13.6, "kind": "succeeded", "detail": {}},
            ],
        }],
    )  # fmt: skip
    result = RunResult(sc, figures, raw={"results": r.to_dict()})
    result.checks = {"lost <= 0": True}
    return result


def test_plots_shade_the_burst_and_the_rollout(tmp_path: Path) -> None:
    out = write_report(_demo_run(), tmp_path / "rep")
    shaded = json.loads((out / "shaded.json").read_text())
    assert set(shaded) == {"latency.png", "offload.png", "throughput.png", "versions.png",
                           "agents.png"}  # fmt: skip
    for name, drawn in shaded.items():
        assert drawn["xlabel"] == "time since start (s)", name
        spans = {(s["category"], round(s["start"], 1), round(s["end"], 1)) for s in drawn["spans"]}
        assert ("burst", 20.0, 32.0) in spans, name
        assert ("rollout", 35.4, 49.0) in spans, name
        # Waves on the run's axis, from the gateway's wall-clock event log.
        assert {("wave", 35.9, 41.9), ("wave", 42.4, 48.4)} <= spans, name
    assert (out / "agents.png").read_bytes()[:4] == b"\x89PNG"


def test_summary_and_html_tell_the_story_in_tables(tmp_path: Path) -> None:
    out = write_report(_demo_run(), tmp_path / "rep")
    summary = (out / "summary.md").read_text()
    assert "{'" not in summary and "1796278" not in summary, "no raw dicts or epoch floats"
    assert "| ro-1 | motion-edge v2 | canary | 1, 100% | max_p99_ratio=5 | succeeded |" in summary
    started = "2026-12-03 06:17:15 UTC"  # created_at, as a person reads it
    assert started in summary
    assert "| ro-1 | 1 | wave-passed |" in summary and "| agent-0 | pass |" in summary
    assert "| 35.4 |" in summary and "| rollout-started | id=ro-1, model=motion-edge" in summary
    assert "| burst x3 | 20.0 | 32.0 | 12.0 s |" in summary
    assert "| agent-0 | motion-edge=2 |" in summary
    html = (out / "report.html").read_text()
    assert html.count('src="data:image/png;base64,') == 5
    assert 'src="latency.png"' not in html and "http" not in html.replace("http-equiv", "")
    assert started in html and "<table>" in html
