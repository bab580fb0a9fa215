"""The fleet dashboard in headless Chromium against a real gateway and real edge agents.

Real mosquitto, a real ``cloud-gateway`` process, two real ``edge-agent`` processes with
their model updater wired to the gateway, and live sensor traffic. A canary rollout is
started from the page with an admin token, followed to the end on the page, and rolled
back from the page; a viewer token can look but gets a clear 403 for admin actions.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from playwright.sync_api import Page

from models.recipes import build_all
from models.recipes.build import build_model
from tests.conftest import Mosquitto
from tests.dashboards.browser import PageWatch, by_testid, events_seen, shown_values, wait_until
from tests.dashboards.fleet import TOKENS, GatewayProcess
from tests.dashboards.live import EdgeAgentProcess, SensorTraffic

OpenPage = Callable[..., PageWatch]
MODEL = "motion-edge"


@dataclass
class Stack:
    gateway: GatewayProcess
    agents: list[EdgeAgentProcess]


@pytest.fixture(scope="module")
def stack(mosquitto: Mosquitto, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    work = tmp_path_factory.mktemp("fleet")
    prefix = f"t{uuid.uuid4().hex[:10]}"
    built = build_all(work / "models", names=(MODEL,))
    v2 = build_model(MODEL, 2, work / "models" / "bundles", built.key)
    gateway = GatewayProcess(work / "gateway", mosquitto.url, built.public_key, prefix)
    agents: list[EdgeAgentProcess] = []
    traffic: SensorTraffic | None = None
    try:
        gateway.push(built.bundles[MODEL])
        gateway.push(v2)
        for i in range(2):
            repo = work / f"repo-{i}"
            repo.mkdir()
            _copy_tree(built.repository, repo)
            agents.append(
                EdgeAgentProcess(
                    work,
                    mosquitto.url,
                    repo,
                    "--gateway-url",
                    gateway.url,
                    "--gateway-token-file",
                    str(gateway.agent_token_file),
                    "--trusted-keys",
                    str(built.public_key),
                    # The gateway signs desired state with desired.key beside its database.
                    "--gateway-key",
                    str(work / "gateway" / "desired.pub"),
                    prefix=prefix,
                    agent_id=f"edge-{i}",
                    site="plant-a",
                )
            )
        traffic = SensorTraffic(
            mosquitto.url, "plant-a", devices=2, rate_hz=50, prefix=f"{prefix}/sensors"
        )
        traffic.start()
        wait_until(
            lambda: len([a for a in gateway.get("/api/v1/fleet") if a["online"]]) == 2,
            20,
            "both agents to report to the gateway",
        )
        yield Stack(gateway, agents)
    finally:
        if traffic is not None:
            traffic.stop()
        for agent in agents:
            agent.stop()
        gateway.stop()


def _copy_tree(src: Path, dest: Path) -> None:
    for path in src.rglob("*"):
        target = dest / path.relative_to(src)
        if path.is_dir():
            target.mkdir(parents=True, exist_ok=True)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(path.read_bytes())


def _sign_in(page: Page, role: str) -> None:
    by_testid(page, "token-input").fill(TOKENS[role])
    by_testid(page, "sign-in").click()


def _polls(page: Page) -> int:
    return int(page.evaluate("Number(document.body.dataset.polls || 0)"))


def _agent_rows(page: Page) -> dict[str, list[str]]:
    rows = by_testid(page, "agents").locator("tr:not(.empty)")
    out = {}
    for i in range(rows.count()):
        cells = rows.nth(i).locator("td").all_text_contents()
        out[cells[0]] = cells
    return out


def test_fleet_page_needs_a_token_then_matches_the_api(stack: Stack, open_page: OpenPage) -> None:
    watch = open_page(stack.gateway.url + "/dashboard")
    page = watch.page
    banner = by_testid(page, "banner")
    wait_until(lambda: "token" in (banner.text_content() or ""), 5, "the sign-in prompt")
    assert by_testid(page, "agents").locator("tr:not(.empty)").count() == 0

    _sign_in(page, "viewer")
    wait_until(lambda: _polls(page) >= 1, 10, "a successful poll")
    assert page.evaluate("sessionStorage.getItem('edgecloud.gateway.token')") == TOKENS["viewer"]

    def fleet_inferences() -> int:
        return sum(a["metrics"].get("inferences", 0) for a in stack.gateway.get("/api/v1/fleet"))

    wait_until(lambda: fleet_inferences() > 0, 20, "agents to report inferences")
    low = fleet_inferences()
    polls = _polls(page)
    wait_until(lambda: _polls(page) > polls + 1, 6, "a poll after the first API read")
    shown = shown_values(page)
    fleet = stack.gateway.get("/api/v1/fleet")
    high = sum(a["metrics"].get("inferences", 0) for a in fleet)
    assert low <= int(shown["fleet-inferences"]["value"] or -1) <= high
    models = stack.gateway.get("/api/v1/models")
    assert shown["agents-total"]["value"] == str(len(fleet)) == "2"
    assert shown["agents-online"]["value"] == str(sum(a["online"] for a in fleet))
    assert shown["models-count"]["value"] == str(len(models))
    rows = _agent_rows(page)
    assert set(rows) == {a["agent_id"] for a in fleet}
    for agent in fleet:
        cells = rows[agent["agent_id"]]
        assert cells[1] == agent["site"]
        assert cells[2] == ("online" if agent["online"] else "offline")
        version = agent["models"][MODEL]["version"]
        assert cells[3] == f"{MODEL} v{version}"
        assert cells[5].startswith("ready")
    model_rows = by_testid(page, "models").locator("td:nth-child(2)").all_text_contents()
    assert model_rows == [", ".join(f"v{v}" for v in m["versions"]) for m in models]
    watch.screenshot("fleet-viewer")
    # Forgetting the token forgets what it showed, and polling stops asking the API.
    by_testid(page, "sign-out").click()
    wait_until(lambda: "token" in (banner.text_content() or ""), 5, "the sign-in prompt again")
    assert page.evaluate("sessionStorage.getItem('edgecloud.gateway.token')") is None
    assert by_testid(page, "agents").locator("tr:not(.empty)").count() == 0
    assert watch.problems() == []


def test_viewer_token_gets_a_clear_403_for_admin_actions(stack: Stack, open_page: OpenPage) -> None:
    watch = open_page(stack.gateway.url + "/dashboard")
    page = watch.page
    _sign_in(page, "viewer")
    wait_until(lambda: _polls(page) >= 1, 10, "a successful poll")
    rollouts_before = stack.gateway.get("/api/v1/rollouts")
    by_testid(page, "rollout-version").select_option("2")
    by_testid(page, "start-rollout").click()
    message = by_testid(page, "admin-message")
    wait_until(lambda: message.get_attribute("data-status") == "error", 5, "the refusal")
    text = message.text_content() or ""
    assert "403" in text and "admin" in text, text
    by_testid(page, "rollback").click()
    wait_until(lambda: "403" in (message.text_content() or "") and message.is_visible(), 5, "403")
    assert stack.gateway.get("/api/v1/rollouts") == rollouts_before  # nothing happened
    watch.screenshot("fleet-viewer-403")
    # The only errors are the two refused calls the browser itself logs.
    assert all("403" in e for e in watch.console_errors), watch.console_errors
    assert len(watch.console_errors) == 2
    assert watch.page_errors == [] and watch.foreign_requests == []


def test_rollout_from_the_page_shows_progress_then_rolls_back(
    stack: Stack, open_page: OpenPage
) -> None:
    watch = open_page(stack.gateway.url + "/dashboard")
    page = watch.page
    _sign_in(page, "admin")
    wait_until(lambda: _polls(page) >= 1, 10, "a successful poll")
    by_testid(page, "rollout-model").select_option(MODEL)
    by_testid(page, "rollout-version").select_option("2")
    by_testid(page, "rollout-strategy").select_option("canary")
    by_testid(page, "rollout-waves").fill("50%, 100%")
    by_testid(page, "rollout-bake").fill("3")
    # Latency ratio off: a real edge-agent reports p99 over its last 8192 results, so the
    # queueing of its own swap stays in it and one canary is judged against one control
    # agent. The verdicts still need 10 new-version results each.
    by_testid(page, "rollout-p99-ratio").fill("off")
    by_testid(page, "rollout-min-samples").fill("10")
    by_testid(page, "start-rollout").click()
    message = by_testid(page, "admin-message")
    wait_until(lambda: message.get_attribute("data-status") == "ok", 10, "the rollout to start")
    rollout_id = stack.gateway.get("/api/v1/rollouts")[0]["id"]
    assert rollout_id in (message.text_content() or "")

    row = by_testid(page, "rollouts").locator(f'tr[data-key="{rollout_id}"]')
    gate = page.locator(f'[data-testid="rollout-gate"][data-rollout="{rollout_id}"]')
    basis = gate.locator('[data-testid="gate-basis"]')
    waves_seen: set[str] = set()
    states_seen: set[str] = set()
    bases_seen: set[str] = set()
    shot = False

    def finished() -> bool:
        nonlocal shot
        cells = row.locator("td").all_text_contents()
        if len(cells) < 9:
            return False
        states_seen.add(cells[3])
        waves_seen.add(cells[4])
        if gate.count():
            bases_seen.add(basis.get_attribute("data-value") or "")
        if cells[3] == "running" and cells[4] == "1 / 2" and not shot:
            watch.screenshot("fleet-rollout-wave1")
            shot = True
        return cells[3] == "succeeded"

    wait_until(finished, 60, "the rollout to succeed on the page", interval=0.1)
    assert "running" in states_seen
    assert "1 / 2" in waves_seen, waves_seen  # the first wave was visible on its own
    cells = row.locator("td").all_text_contents()
    api_rollout = stack.gateway.get(f"/api/v1/rollouts/{rollout_id}")
    assert api_rollout["state"] == "succeeded"
    assert cells[4] == f"{api_rollout['current_wave']} / {api_rollout['wave_count']}"
    assert cells[5] == "100 %" and cells[6] == "updated 2"
    # Wave 1 was judged against the agent still on v1 (the page showed that basis), the
    # last wave against each agent's own pre-update numbers; the page shows the verdicts
    # the API recorded when the rollout passed, with the numbers they compared.
    assert any(b.startswith("control group of 1 agent(s) on v1") for b in bases_seen), bases_seen
    api_gate = api_rollout["gate"]
    gates = api_rollout["gates"]
    assert (gates["max_p99_ratio"], gates["min_samples"]) == (None, 10)  # from the form
    wait_until(lambda: gate.get_attribute("data-state") == "succeeded", 10, "final gate block")
    assert basis.get_attribute("data-value") == api_gate["basis"]
    assert api_gate["basis"].startswith("no control group (every target has the new version")
    verdict_rows = gate.locator('[data-testid="gate-verdicts"] tr')
    shown_verdicts = {
        verdict_rows.nth(i).get_attribute("data-key"): verdict_rows.nth(i)
        .locator("td")
        .all_text_contents()
        for i in range(verdict_rows.count())
    }
    assert set(shown_verdicts) == set(api_gate["verdicts"]) == {"edge-0", "edge-1"}
    waves = {a["agent_id"]: str(a["wave"]) for a in api_rollout["agents"]}
    for agent, verdict in api_gate["verdicts"].items():
        assert verdict["state"] == "pass", verdict
        assert "p99" in verdict["reason"] and "error rate" in verdict["reason"]
        expected = [agent, waves[agent], "pass", verdict["gate"] or "\u2013", verdict["reason"]]
        assert shown_verdicts[agent] == expected
    # The agents themselves run v2, and the page says so.
    for agent in stack.agents:
        wait_until(lambda a=agent: a.status()["model"]["version"] == 2, 10, "agent on v2")
    wait_until(
        lambda: all(r[3] == f"{MODEL} v2" for r in _agent_rows(page).values()),
        10,
        "the agents table to show v2",
    )
    watch.screenshot("fleet-rollout-done")
    # The agent's own dashboard shows the swap in its model history.
    edge = open_page(stack.agents[0].url)
    wait_until(
        lambda: by_testid(edge.page, "model-version").text_content() == "2", 10, "edge page v2"
    )
    history = by_testid(edge.page, "model-history").locator("td:nth-child(2)").all_text_contents()
    assert "2" in history and "1" in history, history
    edge.screenshot("edge-after-rollout")
    assert edge.problems() == []

    by_testid(page, "rollback-model").select_option(MODEL)
    by_testid(page, "rollback").click()
    wait_until(
        lambda: (
            "Rollback" in (message.text_content() or "")
            and message.get_attribute("data-status") == "ok"
        ),
        10,
        "the rollback to be accepted",
    )
    wait_until(lambda: row.locator("td").nth(3).text_content() == "rolled_back", 10, "rolled_back")
    wait_until(
        lambda: all(r[3] == f"{MODEL} v1" for r in _agent_rows(page).values()),
        30,
        "the agents table to show v1 again",
    )
    for agent in stack.agents:
        assert agent.status()["model"]["version"] == 1
    watch.screenshot("fleet-rolled-back")
    assert watch.problems() == []


def _versions_text(versions: list[dict]) -> str:
    by_model: dict[str, list[int]] = {}
    for v in versions:
        seen = by_model.setdefault(v["model"], [])
        if not seen or seen[-1] != v["version"]:
            seen.append(v["version"])
    return ", ".join(f"{m} " + " → ".join(f"v{x}" for x in vs) for m, vs in by_model.items())


def test_fleet_rows_link_agent_pages_and_show_the_last_10_minutes(
    stack: Stack, open_page: OpenPage
) -> None:
    """Runs after the rollout test: the 10-minute versions column shows what it did."""
    watch = open_page(stack.gateway.url + "/dashboard")
    page = watch.page
    _sign_in(page, "viewer")
    wait_until(lambda: _polls(page) >= 1, 10, "a successful poll")
    history = {h["agent_id"]: h for h in stack.gateway.get("/api/v1/fleet-history")}
    assert set(history) == {a.agent_id for a in stack.agents}
    for agent in stack.agents:
        h = history[agent.agent_id]
        # The agent reported where its dashboard answers; the gateway kept it.
        assert h["dashboard_url"] == agent.url
        assert h["heartbeats"] >= 2 and h["results"] > 0
        assert 0.0 <= h["slo_attainment"] <= 1.0 and 0.0 <= h["offload_share"] <= 1.0
        assert {v["model"] for v in h["versions"]} == {MODEL}

    def linked() -> dict[str, str]:
        links = by_testid(page, "agents").locator("td a")
        return {
            links.nth(i).text_content() or "": links.nth(i).get_attribute("href") or ""
            for i in range(links.count())
        }

    links = wait_until(lambda: len(linked()) == 2 and linked(), 10, "agent rows to link")
    assert links == {a.agent_id: a.url for a in stack.agents}
    rows = _agent_rows(page)
    fresh = {h["agent_id"]: h for h in stack.gateway.get("/api/v1/fleet-history")}
    for agent in stack.agents:
        cells = rows[agent.agent_id]
        assert len(cells) == 17  # ..., last seen, config, then the three 10-minute columns
        slo, offload, versions = cells[14:17]
        # "99.87 % ▇▇█…": the window's figure, then one bar per 10 s bucket.
        assert re.fullmatch(r"\d+\.\d\d % [▁▂▃▄▅▆▇█ ]+", slo), slo
        assert re.fullmatch(r"\d+\.\d % [▁▂▃▄▅▆▇█ ]+", offload), offload
        assert versions == _versions_text(fresh[agent.agent_id]["versions"])
    # The rollout test before this one moved both agents to v2 and back: the window shows it.
    assert all("v1 → v2" in rows[a.agent_id][16] for a in stack.agents), rows
    watch.screenshot("fleet-links")
    assert watch.problems() == []

    # The link leads to a working agent page (its own origin, its own stream).
    edge = open_page(links[stack.agents[0].agent_id])
    wait_until(lambda: events_seen(edge.page) >= 1, 10, "the linked agent page to go live")
    assert by_testid(edge.page, "agent-id").text_content() == stack.agents[0].agent_id
    assert edge.problems() == []
