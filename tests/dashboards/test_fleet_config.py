"""The fleet page's config column in headless Chromium: desired vs reported live settings
of real edge agents (real gateway process, mosquitto, sensor traffic), and the reason an
agent refused a config, as the fleet API reports them."""

from __future__ import annotations

import json

from tests.dashboards.browser import wait_until
from tests.dashboards.fleet import api
from tests.dashboards.test_fleet_page import OpenPage, Stack, _agent_rows, _sign_in, stack

__all__ = ["stack"]  # the module-scoped stack fixture of the fleet page tests

CONFIG = 13  # the config column (the last)


def test_config_column_shows_desired_reported_and_refusal(
    stack: Stack, open_page: OpenPage
) -> None:
    gw = stack.gateway
    good = json.dumps({"values": {"max_wait_ms": 3, "policy": "local-only"}}).encode()
    bad = json.dumps({"values": {"slo_ms": -1}}).encode()
    api(gw.url, "PUT", "/api/v1/fleet/edge-0/config", "admin", good)
    api(gw.url, "PUT", "/api/v1/fleet/edge-1/config", "admin", bad)

    def status(agent: str) -> str:
        return str(gw.get(f"/api/v1/fleet/{agent}/config")["status"])

    wait_until(lambda: status("edge-0") == "in-sync", 15, "edge-0 to report its config")
    wait_until(lambda: status("edge-1") == "refused", 15, "edge-1 to refuse its config")
    ok = gw.get("/api/v1/fleet/edge-0/config")
    refused = gw.get("/api/v1/fleet/edge-1/config")
    assert ok["reported"]["effective"]["policy"] == "local-only"
    assert "slo_ms" in refused["reason"]

    watch = open_page(gw.url + "/dashboard")
    _sign_in(watch.page, "viewer")

    def cells() -> dict[str, str]:
        return {a: row[CONFIG] for a, row in _agent_rows(watch.page).items() if len(row) > CONFIG}

    wait_until(lambda: len(cells()) == 2, 10, "the agent rows with a config column")
    shown = cells()
    version = ok["desired"]["version"]
    assert shown["edge-0"] == f"v{version} max_wait_ms=3, policy=local-only"
    assert shown["edge-1"] == f"refused v{refused['desired']['version']}: {refused['reason']}"
    watch.screenshot("fleet-config-twin")
    assert watch.problems() == []
    for agent in ("edge-0", "edge-1"):  # leave the shared stack on its flags
        api(gw.url, "DELETE", f"/api/v1/fleet/{agent}/config", "admin")
