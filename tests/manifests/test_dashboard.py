"""The Grafana dashboard queries only metrics our processes export, and covers all of them."""

from __future__ import annotations

import json
import re

from prometheus_client import CollectorRegistry

from tests.manifests.rendering import MANIFESTS, find, pod_spec, render, workloads

DASHBOARD = MANIFESTS / "cloud" / "grafana" / "edgecloud-dashboard.json"
OUR_METRIC = re.compile(r"\b(?:edge|offload|nv)_[a-z0-9_]+\b")
#: Families every prometheus_client registry has; a dashboard need not chart them all.
STANDARD = ("process_", "python_")
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}


def exported(registry: CollectorRegistry) -> dict[str, set[str]]:
    """Family name -> the sample names Prometheus scrapes for it (Triton's ``nv_*`` counters
    are exposed as Triton does, without ``_total``)."""
    from offload.metrics import TRITON_FAMILIES

    return {
        fam.name: {fam.name}
        if fam.name in TRITON_FAMILIES
        else {fam.name + s for s in SUFFIXES[fam.type]}
        for fam in registry.collect()
        if not fam.name.startswith(STANDARD)
    }


def our_families() -> dict[str, set[str]]:
    from edge_agent.ops.stats import Stats
    from offload.metrics import ServerMetrics

    return {**exported(Stats().registry), **exported(ServerMetrics().registry)}


def queries(dashboard: dict) -> list[str]:
    found: list[str] = []
    for panel in dashboard["panels"]:
        found += [t["expr"] for t in panel.get("targets", [])]
    found += [v["query"] for v in dashboard["templating"]["list"] if v["type"] == "query"]
    return found


def test_dashboard_metrics_exist_and_cover_every_family() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    families = our_families()
    samples = {name for names in families.values() for name in names}
    used = {m for q in queries(dashboard) for m in OUR_METRIC.findall(q)}
    assert used - samples == set(), "dashboard queries metrics nobody exports"
    uncovered = {fam for fam, names in families.items() if not names & used}
    assert uncovered == set(), "exported metric families missing from the dashboard"
    for q in queries(dashboard):
        for match in re.finditer(r"histogram_quantile\([^,]+,(.*)", q):
            assert "_bucket" in match.group(1), q


def test_dashboard_ships_in_the_cloud_render() -> None:
    cm = find(render("cloud"), "ConfigMap", "edgecloud-grafana-dashboard")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(cm["data"]["edgecloud.json"]) == json.loads(DASHBOARD.read_text())


def test_scrape_annotations_point_at_declared_ports() -> None:
    checked = 0
    for target in ("edge-cpu", "edge-jetson", "cloud"):
        for w in workloads(render(target)):
            notes = w["spec"]["template"]["metadata"].get("annotations", {})
            if notes.get("prometheus.io/scrape") != "true":
                continue
            ports = {p["containerPort"] for c in pod_spec(w)["containers"] for p in c["ports"]}
            assert int(notes["prometheus.io/port"]) in ports, w["metadata"]["name"]
            checked += 1
    assert checked == 4  # the agent in both edge overlays, the offload server, the gateway
