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
