"""The gateway's 10-minute heartbeat memory: window figures, restarts, bounds, URLs."""

from __future__ import annotations

from cloud_gateway.heartbeats import HeartbeatHistory, clean_url
from cloud_gateway.schemas import StatusReport


def beat(agent: str, results: int, slo: float, offload: float, version: int = 1, **extra):  # type: ignore[no-untyped-def]
    return StatusReport.model_validate(
        {
            "agent_id": agent,
            "models": {"motion-edge": {"version": version}},
            "metrics": {"inferences": results, "errors": 0, "slo_attainment": slo,
                        "offload_share": offload},
            **extra,
        }
    )  # fmt: skip


def test_window_figures_are_differences_of_the_cumulative_counters() -> None:
    h = HeartbeatHistory(window_s=600.0)
    # 1,000 results before the window at 50 % attainment, then 1,000 more all in time.
    h.record(beat("a", 1000, 0.5, 0.0), now=0.0)
    h.record(beat("a", 1000, 0.5, 0.0), now=100.0)  # the baseline just before the window
    h.record(beat("a", 1500, 0.6666666, 0.2), now=400.0)
    h.record(beat("a", 2000, 0.75, 0.25, version=2), now=700.0)
    v = h.view("a", now=700.0)
    assert v.results == 1000
    assert v.slo_attainment == 1.0  # (0.75*2000 - 0.5*1000) / 1000
    assert abs(v.offload_share - 0.5) < 1e-6  # (500 - 0) / 1000
    assert [(x["model"], x["version"]) for x in v.versions] == [
        ("motion-edge", 1),
        ("motion-edge", 2),
    ]
    assert v.versions[0]["since"] == 100.0 and v.versions[1]["since"] == 700.0
    assert sum(p["results"] for p in v.spark) == 1000 and len(v.spark) <= 60
    assert v.heartbeats == 2


def test_an_agent_restart_counts_from_zero() -> None:
    h = HeartbeatHistory()
    h.record(beat("a", 5000, 1.0, 0.0), now=0.0)
    h.record(beat("a", 100, 0.5, 1.0), now=10.0)  # restarted: counters went back
    v = h.view("a", now=10.0)
    assert v.results == 100 and v.slo_attainment == 0.5 and v.offload_share == 1.0


def test_bounded_and_quiet_agents() -> None:
    h = HeartbeatHistory(max_points=5, max_agents=2)
    for i in range(20):
        h.record(beat("a", i, 1.0, 0.0), now=float(i))
    assert len(h._points["a"]) == 5
    h.record(beat("b", 1, 1.0, 0.0), now=21.0)
    h.record(beat("c", 1, 1.0, 0.0), now=22.0)  # evicts the least recently heard agent
    assert len(h) == 2 and h.view("a", now=22.0).heartbeats == 0
    empty = h.view("nobody", now=22.0)
    assert empty.results == 0 and empty.slo_attainment is None and empty.spark == []
    # A last will (offline, no metrics) is not a data point.
    h.record(StatusReport(agent_id="b", online=False), now=23.0)
    assert h.view("b", now=23.0).heartbeats == 1


def test_dashboard_url_is_kept_only_when_it_is_a_plain_http_url() -> None:
    h = HeartbeatHistory()
    h.record(beat("a", 1, 1.0, 0.0, dashboard_url="http://10.0.0.7:8080/"), now=1.0)
    assert h.view("a", now=1.0).dashboard_url == "http://10.0.0.7:8080/"
    h.record(beat("a", 2, 1.0, 0.0), now=2.0)  # an older agent's beat: the URL stays
    assert h.view("a", now=2.0).dashboard_url == "http://10.0.0.7:8080/"
    h.record(beat("a", 3, 1.0, 0.0, dashboard_url="javascript:alert(1)"), now=3.0)
    assert h.view("a", now=3.0).dashboard_url is None and h.bad_urls == 1
    assert h.view("a", now=3.0).heartbeats == 3  # the heartbeat itself still counted
    for bad in ("ftp://x/", "http://", 'http://x/"><script>', "x" * 400, 7, None):
        assert clean_url(bad) is None
    assert clean_url("https://edge-1.plant-a.example:8080/") is not None
