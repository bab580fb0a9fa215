"""Headless Chromium (Debian's package, driven by Playwright) for the dashboard tests.

Playwright's own browser download is never used: the tests launch the system
``chromium`` with a fresh profile, record console errors, failed requests and every
request that leaves the page's origin, and save screenshots under ``test-artifacts/``.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, ConsoleMessage, Playwright, sync_playwright

from tests.dashboards.browser import PageWatch, origin_of

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


# Module scope, not session: Playwright's sync API keeps an event loop running while it
# is open, and pytest-asyncio cannot run async tests (ours or other packages') under it.
@pytest.fixture(scope="module")
def playwright() -> Iterator[Playwright]:
    with sync_playwright() as pw:
        yield pw


@pytest.fixture(scope="module")
def browser(playwright: Playwright) -> Iterator[Browser]:
    exe = shutil.which("chromium")
    if exe is None:
        raise RuntimeError("chromium is not installed: .ci/run installs it with apt")
    # launch() gives the browser a fresh temporary profile (--user-data-dir) of its own.
    browser = playwright.chromium.launch(executable_path=exe, headless=True, args=CHROMIUM_ARGS)
    yield browser
    browser.close()


@pytest.fixture
def open_page(browser: Browser) -> Iterator:
    """open_page(url) -> PageWatch: a fresh context (own sessionStorage) per call."""
    contexts = []

    def _open(url: str, *, width: int = 1400, height: int = 1000) -> PageWatch:
        ctx = browser.new_context(viewport={"width": width, "height": height})
        contexts.append(ctx)
        page = ctx.new_page()
        watch = PageWatch(page, origin_of(url))

        def on_console(msg: ConsoleMessage) -> None:
            if msg.type == "error":
                watch.console_errors.append(f"console: {msg.text}")

        def on_request(request) -> None:  # type: ignore[no-untyped-def]
            if request.url.startswith(("data:", "about:")):
                return
            if origin_of(request.url) != watch.origin:
                watch.foreign_requests.append(f"foreign request: {request.url}")

        def on_failed(request) -> None:  # type: ignore[no-untyped-def]
            # A page navigating away or closing aborts its SSE stream: not a failure.
            if request.failure and "ERR_ABORTED" in request.failure:
                return
            watch.failed_requests.append(f"failed: {request.url} {request.failure}")

        page.on("console", on_console)
        page.on("pageerror", lambda exc: watch.page_errors.append(f"page error: {exc}"))
        page.on("request", on_request)
        page.on("requestfailed", on_failed)
        page.goto(url, wait_until="load")
        return watch

    yield _open
    for ctx in contexts:
        ctx.close()
