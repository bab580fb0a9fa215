"""The Grafana dashboard's PromQL checked against a real ``/metrics`` scrape: every metric a
query names exists in the scrape, ``rate()`` is applied only to counters and histogram
series, and a metric outside ``rate()`` is a gauge (one helper for every process)."""

from __future__ import annotations

import json
import re

from prometheus_client.parser import text_string_to_metric_families

from tests.manifests.rendering import MANIFESTS

DASHBOARD = MANIFESTS / "cloud" / "grafana" / "edgecloud-dashboard.json"
IN_RATE = re.compile(r"rate\(\s*([a-z_][a-z0-9_]*)")


def scrape_types(text: str) -> dict[str, str]:
    """Series name as PromQL sees it -> its family's type."""
    types: dict[str, str] = {}
    for family in text_string_to_metric_families(text):
        types[family.name] = family.type
        for sample in family.samples:
            types[sample.name] = family.type
        if family.type == "counter":
            types[family.name + "_total"] = "counter"
    # Triton's counters are exposed without _total; PromQL uses the exposed name.
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            types[name] = kind
    return types


def queries() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]


def check_queries(scrape: str, metric: re.Pattern[str]) -> int:
    """Check every dashboard query's metrics matching ``metric``; returns how many."""
    types = scrape_types(scrape)
    checked = 0
    for query in queries():
        in_rate = set(IN_RATE.findall(query))
        for name in metric.findall(query):
            assert name in types, f"{name} (in {query!r}) is not in the scrape"
            if name in in_rate:
                assert types[name] in {"counter", "histogram"}, f"rate() of a {types[name]}: {name}"
            else:
                assert types[name] == "gauge", f"{name} used as a gauge but is {types[name]}"
            checked += 1
    return checked
