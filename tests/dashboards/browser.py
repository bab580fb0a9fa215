"""Page helpers shared by the dashboard tests (see conftest.py for the browser)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from playwright.sync_api import Locator, Page

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "dashboards"


def origin_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


@dataclass
class PageWatch:
    """What a page did that a test may want to fail on."""

    page: Page
    origin: str
    console_errors: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)
    failed_requests: list[str] = field(default_factory=list)
    foreign_requests: list[str] = field(default_factory=list)

    def problems(self) -> list[str]:
        return [
            *self.console_errors,
            *self.page_errors,
            *self.failed_requests,
            *self.foreign_requests,
        ]

    def screenshot(self, name: str) -> Path:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        return path


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def by_testid(page: Page, name: str) -> Locator:
    return page.locator(f'[data-testid="{name}"]')


def value_of(page: Page, name: str) -> str | None:
    return by_testid(page, name).get_attribute("data-value")


def shown_values(page: Page) -> dict[str, dict[str, str | None]]:
    """Every data-testid element's text and raw data-value, read in one synchronous pass
    (so no update can land between two reads)."""
    return page.evaluate(
        """() => Object.fromEntries([...document.querySelectorAll('[data-testid]')].map(
             n => [n.dataset.testid, {text: n.textContent, value: n.dataset.value ?? null}]))"""
    )


def events_seen(page: Page) -> int:
    """How many status documents the edge page has applied."""
    return int(page.evaluate("Number(document.body.dataset.events || 0)"))


def wait_until(check: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    """Poll `check` until it returns something truthy; fail with `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)
