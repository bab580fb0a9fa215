"""The edge dashboard in headless Chromium against a real edge-agent with live traffic.

Real mosquitto, a real ``edge-agent`` process serving a real ONNX model, sensor
readings published over MQTT while the page is open.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.request import urlopen

import pytest

from models.recipes import build_all
from tests.conftest import Mosquitto
from tests.dashboards.browser import PageWatch, by_testid, events_seen, shown_values, wait_until
from tests.dashboards.live import EdgeAgentProcess, SensorTraffic

OpenPage = Callable[..., PageWatch]

COUNTERS = {
    "total-readings": ("totals", "readings"),
    "total-inferences": ("totals", "inferences"),
    "total-results": ("totals", "results"),
    "total-deadletter": ("totals", "deadletter"),
    "deadletter-total": ("deadletter", "total"),
    "route-local": ("routes", "local"),
    "uptime": ("uptime_s",),
}
GAUGES = {
    "p50": ("latency_ms", "p50"),
    "p95": ("latency_ms", "p95"),
    "p99": ("latency_ms", "p99"),
    "slo-attainment": ("slo_attainment",),
    "offload-share": ("offload_share",),
    "queue-depth": ("queue_depth",),
    "readings-per-s": ("rates", "readings_per_s"),
    "inferences-per-s": ("rates", "inferences_per_s"),
    "rss-mb": ("node", "rss_mb"),
}


def _get(doc: dict[str, Any], path: tuple[str, ...]) -> Any:
    for key in path:
        doc = doc[key]
    return doc


@pytest.fixture(scope="module")
def live_agent(
    mosquitto: Mosquitto, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[EdgeAgentProcess, SensorTraffic]]:
    work = tmp_path_factory.mktemp("edge-live")
    built = build_all(work / "models", names=("motion-edge",))
    agent = EdgeAgentProcess(work, mosquitto.url, built.repository)
    traffic = SensorTraffic(mosquitto.url, agent.site, prefix=f"{agent.prefix}/sensors").start()
    try:
        wait_until(lambda: agent.status()["totals"]["results"] > 0, 20, "first results")
        yield agent, traffic
    finally:
        traffic.stop()
        agent.stop()


def test_live_page_tracks_the_agent(
    live_agent: tuple[EdgeAgentProcess, SensorTraffic], open_page: OpenPage
) -> None:
    agent, _ = live_agent
    watch = open_page(agent.url)
    page = watch.page
    wait_until(lambda: events_seen(page) >= 2, 10, "two status events")

    # Counters: the page shows a snapshot taken between two API reads.
    before = agent.status()
    wait_until(
        lambda: (
            float(page.get_attribute('[data-testid="uptime"]', "data-value") or 0)
            >= before["uptime_s"]
        ),
        3,
        "a snapshot newer than the first API read",
    )
    shown = shown_values(page)
    after = agent.status()
    for name, path in COUNTERS.items():
        value = float(shown[name]["value"] or "nan")
        assert _get(before, path) <= value <= _get(after, path), name
    assert after["totals"]["readings"] > before["totals"]["readings"], "traffic is live"
    assert shown["agent-id"]["text"] == after["agent_id"]
    assert shown["site"]["text"] == after["site"]
    assert shown["policy"]["text"] == after["policy"]
    assert float(shown["slo-ms"]["value"] or 0) == after["slo_ms"]
    assert shown["model-name"]["text"] == after["model"]["name"]
    assert shown["model-version"]["text"] == str(after["model"]["version"])
    assert float(shown["readings-per-s"]["value"] or 0) > 0
    assert shown["connection"]["text"] == "live"

    # Every chart gets a new point within 2 s while traffic flows.
    charts = ["throughput", "latency", "routing", "queue", "node"]
    pushes = {
        c: int(by_testid(page, f"chart-{c}").get_attribute("data-pushes") or 0) for c in charts
    }
    t0 = time.monotonic()
    for c in charts:
        chart = by_testid(page, f"chart-{c}")
        wait_until(
            lambda chart=chart, c=c: int(chart.get_attribute("data-pushes") or 0) > pushes[c],
            max(0.0, 2.0 - (time.monotonic() - t0)),
            f"chart {c} to update",
        )
    wait_until(lambda: events_seen(page) >= 6, 10, "a few seconds of chart data")
    throughput = by_testid(page, "chart-throughput").locator("path").first.get_attribute("d")
    assert throughput and throughput.count("L") >= 1  # a drawn line, not a lone point

    # Alerts per device: the agent's class-change alerts show up under their devices.
    wait_until(lambda: agent.status()["alerts"], 20, "an alert from the agent")
    wait_until(
        lambda: by_testid(page, "alerts-by-device").locator("tr:not(.empty)").count() > 0,
        3,
        "alerts on the page",
    )
    devices = set(by_testid(page, "alerts-by-device").locator("td:first-child").all_text_contents())
    api_devices = {f"{a['site']}/{a['device']}" for a in agent.status()["alerts"]}
    assert devices & api_devices
    assert by_testid(page, "model-history").locator("tr").count() >= 1
    watch.screenshot("edge-live")
    assert watch.problems() == []


def test_quiet_agent_matches_status_api_exactly(
    live_agent: tuple[EdgeAgentProcess, SensorTraffic], open_page: OpenPage
) -> None:
    """With traffic paused the counters and quantiles hold still: page == API, to the digit."""
    agent, traffic = live_agent
    watch = open_page(agent.url)
    page = watch.page
    traffic.paused.set()
    try:
        # Readings still queued in the broker or in windows drain within a second or two.
        stable: list[dict[str, Any]] = []

        def settled() -> bool:
            stable.append(agent.status())
            if len(stable) < 2:
                return False
            a, b = stable[-2]["totals"], stable[-1]["totals"]
            return a == b and stable[-1]["rates"]["readings_per_s"] == 0

        wait_until(settled, 20, "the agent to go quiet", interval=0.5)
        seen = events_seen(page)
        wait_until(lambda: events_seen(page) >= seen + 2, 5, "two fresh events")
        shown = shown_values(page)
        doc = agent.status()
        for name, path in {**COUNTERS, **GAUGES}.items():
            if name in ("uptime", "rss-mb"):
                continue  # these move even when idle
            expected = _get(doc, path)
            assert float(shown[name]["value"] or "nan") == pytest.approx(expected), name
        reasons = by_testid(page, "reasons").locator("td:first-child").all_text_contents()
        assert set(reasons) == set(doc["reasons"]) and doc["reasons"]
        dl = dict(
            zip(
                by_testid(page, "deadletter-reasons")
                .locator("td:nth-child(1)")
                .all_text_contents(),
                by_testid(page, "deadletter-reasons")
                .locator("td:nth-child(2)")
                .all_text_contents(),
                strict=True,
            )
        )
        assert {k: int(v.replace(",", "")) for k, v in dl.items()} == doc["deadletter"]["by_reason"]
        assert doc["deadletter"]["total"] > 0, "the traffic's bad JSON was dead-lettered"
        watch.screenshot("edge-live-quiet")
        assert watch.problems() == []
    finally:
        traffic.paused.clear()


def test_dashboard_assets_are_served_by_the_agent(
    live_agent: tuple[EdgeAgentProcess, SensorTraffic],
) -> None:
    """Everything the page needs comes from the agent itself (no CDN, no network)."""
    agent, _ = live_agent
    with urlopen(agent.url, timeout=5) as resp:
        # The agent serves the page through edge_agent.ops.dashboard.add_routes (CSP included).
        assert "connect-src 'self'" in resp.headers["Content-Security-Policy"]
        index = resp.read().decode()
    for asset in ("dashboard/app.js", "dashboard/style.css"):
        assert asset in index
        with urlopen(agent.url + asset, timeout=5) as resp:
            assert resp.status == 200 and len(resp.read()) > 100
    assert "http://" not in index and "https://" not in index
