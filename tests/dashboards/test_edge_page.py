"""The edge dashboard page against a contract-shaped status feed (exact numbers, soak).

The live end-to-end checks against a real edge-agent process are in
test_edge_live.py; here the feed is deterministic, so every rendered number can be
checked against the document it came from, and the page can be driven at 200 updates
per second to show that hours of updates do not grow its DOM, listeners or heap.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from tests.dashboards.browser import (
    PageWatch,
    by_testid,
    events_seen,
    shown_values,
    value_of,
    wait_until,
)
from tests.dashboards.contract_edge import ContractEdge, status_at

OpenPage = Callable[..., PageWatch]


def _fmt_pct(x: float, digits: int) -> str:
    return f"{x * 100:.{digits}f} %"


def test_page_renders_the_status_document_exactly(open_page: OpenPage) -> None:
    with ContractEdge(interval_s=0.5).running() as edge:
        watch = open_page(edge.url)
        page = watch.page
        wait_until(lambda: events_seen(page) >= 3, 10, "three status events")
        # The shown uptime identifies which document the page rendered last.
        uptime = float(value_of(page, "uptime") or "nan")
        tick = round(uptime - 100.0)
        doc = status_at(tick)
        # Read everything in one go so no new event slips in between.
        shown = shown_values(page)
        if float(shown["uptime"]["value"]) != uptime:
            pytest.fail("the page changed while it was read")  # pragma: no cover
        assert shown["agent-id"]["text"] == doc["agent_id"]
        assert shown["site"]["text"] == doc["site"]
        assert shown["policy"]["text"] == doc["policy"]
        assert shown["model-name"]["text"] == doc["model"]["name"]
        assert shown["model-version"]["text"] == str(doc["model"]["version"])
        assert shown["model-backend"]["text"] == doc["model"]["backend"]
        exact = {
            "readings-per-s": doc["rates"]["readings_per_s"],
            "inferences-per-s": doc["rates"]["inferences_per_s"],
            "p50": doc["latency_ms"]["p50"],
            "p95": doc["latency_ms"]["p95"],
            "p99": doc["latency_ms"]["p99"],
            "slo-attainment": doc["slo_attainment"],
            "offload-share": doc["offload_share"],
            "queue-depth": doc["queue_depth"],
            "deadletter-total": doc["deadletter"]["total"],
            "cpu-percent": doc["node"]["cpu_percent"],
            "temperature": doc["node"]["temperature_c"],
            "route-local": doc["routes"]["local"],
            "route-shed": doc["routes"]["shed"],
            "total-inferences": doc["totals"]["inferences"],
            "total-offloaded": doc["totals"]["offloaded"],
        }
        for name, expected in exact.items():
            assert float(shown[name]["value"]) == pytest.approx(expected, rel=1e-12), name
        assert shown["p99"]["text"] == f"{doc['latency_ms']['p99']:.1f}"
        assert shown["slo-attainment"]["text"] == _fmt_pct(doc["slo_attainment"], 2)
        assert shown["offload-share"]["text"] == _fmt_pct(doc["offload_share"], 1)
        assert shown["total-inferences"]["text"] == f"{doc['totals']['inferences']:,}"
        assert shown["gpu-percent"]["text"] == "n/a"  # null in the document
        # Tables: reasons sorted by count, one row per dead-letter reason, per-device alerts.
        reasons = by_testid(page, "reasons").locator("tr td:first-child").all_text_contents()
        assert reasons == sorted(doc["reasons"], key=lambda r: -doc["reasons"][r])
        dl_rows = by_testid(page, "deadletter-reasons").locator("tr").count()
        assert dl_rows == len(doc["deadletter"]["by_reason"])
        devices = {f"{a['site']}/{a['device']}" for a in doc["alerts"]}
        shown_devices = by_testid(page, "alerts-by-device").locator("tr td:first-child")
        assert set(shown_devices.all_text_contents()) == devices
        # One row per served model, each with its own topics and numbers.
        rows = by_testid(page, "models").locator("tr")
        cells = [rows.nth(i).locator("td").all_text_contents() for i in range(rows.count())]
        assert [c[:3] for c in cells] == [
            [m["name"], f"v{m['version']}", m["topics"] or "(default)"] for m in doc["models"]
        ]
        assert cells[1][4:7] == ["5.5", "100.0 %", "0.0 %"]
        assert by_testid(page, "connection").get_attribute("data-state") == "live"
        watch.screenshot("edge-contract")
        assert watch.problems() == []


def test_charts_update_within_two_seconds(open_page: OpenPage) -> None:
    with ContractEdge(interval_s=1.0).running() as edge:
        page = open_page(edge.url).page
        charts = ["throughput", "latency", "routing", "queue", "node"]
        wait_until(lambda: events_seen(page) >= 2, 10, "first events")
        before = {
            c: int(by_testid(page, f"chart-{c}").get_attribute("data-pushes") or 0) for c in charts
        }
        paths = (
            by_testid(page, "chart-latency")
            .locator("path")
            .evaluate_all("ps => ps.map(p => p.getAttribute('d'))")
        )
        t0 = time.monotonic()
        for c in charts:
            chart = by_testid(page, f"chart-{c}")
            wait_until(
                lambda chart=chart, c=c: int(chart.get_attribute("data-pushes") or 0) > before[c],
                2.0 - (time.monotonic() - t0),
                f"chart {c} to update",
            )
        after = (
            by_testid(page, "chart-latency")
            .locator("path")
            .evaluate_all("ps => ps.map(p => p.getAttribute('d'))")
        )
        assert after != paths and all(d.startswith("M") for d in after)
        # The SLO reference line sits at slo_ms on the latency chart's axis.
        assert (
            by_testid(page, "chart-latency").locator("line.reference").get_attribute("visibility")
            == "visible"
        )


def test_page_stays_flat_over_hours_of_updates(open_page: OpenPage) -> None:
    """3,000 updates (50 min at the agent's 1 Hz) leave DOM nodes, listeners and heap flat."""
    with ContractEdge(interval_s=0.005).running() as edge:
        page = open_page(edge.url).page
        cdp = page.context.new_cdp_session(page)

        def measure() -> tuple[int, int, int]:
            # Measured with the stream held, so no update is half-applied; the smallest
            # of a few forced-GC readings, because one GC may leave a little garbage.
            edge.paused.set()
            time.sleep(0.3)
            heaps = []
            for _ in range(3):
                cdp.send("HeapProfiler.collectGarbage")
                heaps.append(cdp.send("Runtime.getHeapUsage")["usedSize"])
                time.sleep(0.1)
            listeners = cdp.send("Memory.getDOMCounters")["jsEventListeners"]
            nodes = page.evaluate(
                """() => { const w = document.createTreeWalker(document, NodeFilter.SHOW_ALL);
                           let n = 0; while (w.nextNode()) n++; return n; }"""
            )
            edge.paused.clear()
            return nodes, listeners, min(heaps)

        def applied(n: int) -> bool:
            # Back-pressure: on a busy machine the page may apply fewer than 200 updates
            # per second, and a backlog queued in the browser would look like a leak.
            seen = events_seen(page)
            if edge.tick - seen > 50:
                edge.paused.set()
            else:
                edge.paused.clear()
            return seen >= n

        # Warm up past every bound: chart rings (600), alert tables, reason rows.
        wait_until(lambda: applied(800), 60, "800 warm-up events", interval=0.05)
        nodes0, listeners0, heap0 = measure()
        start = events_seen(page)
        wait_until(lambda: applied(start + 3000), 240, "3000 more events", interval=0.05)
        nodes1, listeners1, heap1 = measure()
        assert nodes1 == nodes0, (nodes0, nodes1)
        assert listeners1 == listeners0, (listeners0, listeners1)
        assert heap1 - heap0 < 256 * 1024, f"heap grew {heap0} -> {heap1} bytes"


def test_page_recovers_when_the_stream_drops(open_page: OpenPage) -> None:
    edge = ContractEdge(interval_s=0.2)
    with edge.running():
        watch = open_page(edge.url)
        page = watch.page
        wait_until(lambda: events_seen(page) >= 2, 10, "first events")
    # The server is gone: the badge must say so instead of showing stale numbers as live.
    wait_until(
        lambda: by_testid(page, "connection").get_attribute("data-state") != "live",
        8,
        "the page to notice the stream is gone",
    )
    seen = events_seen(page)
    with ContractEdge(interval_s=0.2, port=edge.port).running():
        wait_until(lambda: events_seen(page) > seen + 2, 15, "events after the agent came back")
        assert by_testid(page, "connection").get_attribute("data-state") == "live"
