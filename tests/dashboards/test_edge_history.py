"""A page opened after a burst shows the burst: the agent's 10-minute memory in the charts.

Real mosquitto, a real ``edge-agent`` process, readings over MQTT: steady traffic, a
burst at several times the steady rate, back to steady, and only then the page opens.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from urllib.request import urlopen

import pytest

from models.recipes import build_all
from tests.conftest import Mosquitto
from tests.dashboards.browser import PageWatch, by_testid, events_seen, wait_until
from tests.dashboards.live import EdgeAgentProcess, SensorTraffic

OpenPage = Callable[..., PageWatch]


def _first_event(url: str) -> dict:
    with urlopen(url + "api/events", timeout=10) as resp:
        for line in resp:
            if line.startswith(b"data: "):
                return json.loads(line[6:])
    raise AssertionError("no SSE message")


def test_page_opened_after_a_burst_shows_it(
    mosquitto: Mosquitto, tmp_path: Path, open_page: OpenPage
) -> None:
    built = build_all(tmp_path / "models", names=("motion-edge",))
    agent = EdgeAgentProcess(tmp_path, mosquitto.url, built.repository)
    steady = SensorTraffic(mosquitto.url, agent.site, devices=2, rate_hz=25.0,
                           prefix=f"{agent.prefix}/sensors")  # fmt: skip
    burst: SensorTraffic | None = None
    try:
        steady.start()
        wait_until(lambda: agent.status()["rates"]["readings_per_s"] > 20, 20, "steady traffic")
        time.sleep(3.0)
        base_rate = agent.status()["rates"]["readings_per_s"]
        burst = SensorTraffic(mosquitto.url, agent.site + "-b", devices=8, rate_hz=100.0,
                              prefix=f"{agent.prefix}/sensors")  # fmt: skip
        burst.start()
        wait_until(
            lambda: agent.status()["rates"]["readings_per_s"] > 3 * base_rate,
            20,
            "the burst to show in the agent's rate",
        )
        time.sleep(5.0)  # the burst at full rate for a while
        burst.stop()
        burst = None
        # The agent's rate (a 5 s sliding window) is back near steady before the page opens.
        wait_until(
            lambda: agent.status()["rates"]["readings_per_s"] < 2 * base_rate, 20, "the calm"
        )
        time.sleep(1.5)  # a calm sample or two in the ring as well

        # The stream's first message carries the ring: the burst is in it.
        first = _first_event(agent.url)
        hist = first["history"]
        assert len(hist["t"]) == len(hist["readings_per_s"]) >= 10
        assert hist["t"] == sorted(hist["t"]) and first["ts"] >= hist["t"][-1]
        peak = max(v for v in hist["readings_per_s"] if v is not None)
        assert peak > 3 * base_rate

        watch = open_page(agent.url)
        page = watch.page
        wait_until(lambda: events_seen(page) >= 2, 10, "two status events")
        chart = by_testid(page, "chart-throughput")
        wait_until(lambda: int(chart.get_attribute("data-points") or 0) >= 10, 5, "history drawn")
        shown_now = float(by_testid(page, "readings-per-s").get_attribute("data-value") or "nan")
        chart_max = float(chart.get_attribute("data-max") or 0)
        # The tile shows now (calm); the chart shows what happened before the page opened.
        assert shown_now < 2 * base_rate
        assert chart_max >= peak
        points = int(chart.get_attribute("data-points") or 0)
        assert points >= int(page.evaluate("Number(document.body.dataset.historyPoints)")) >= 10
        # Page and agent agree on the time axis: the chart spans the history's first sample.
        assert float(chart.get_attribute("data-first-t") or 0) == pytest.approx(hist["t"][0])
        watch.screenshot("edge-after-burst")
        assert watch.problems() == []
    finally:
        if burst is not None:
            burst.stop()
        steady.stop()
        agent.stop()
