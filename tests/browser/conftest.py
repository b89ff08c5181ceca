"""Browser tests: Playwright driving Debian's Chromium (``apt-get install chromium``).

The Django app runs in a live server thread against the real test database; screenshots of each
page land in ``test-artifacts/`` (kept by CI as artifacts).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

# The real gateway and fake engines, for pages that call /v1 (session-scoped, started on first use).
from tests.gateway.conftest import engines, gateway, start_gateway  # noqa: F401

CHROMIUM = os.environ.get("CHROMIUM_PATH") or shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


@pytest.fixture(scope="module")
def browser(monkeypatch_module):
    """One Chromium per module. Playwright's sync API keeps an event loop running in this thread
    while it is open, so it must not outlive the browser tests (later tests use asyncio.run)."""
    if not Path(CHROMIUM).exists():
        pytest.fail(
            f"Chromium not found at {CHROMIUM}: apt-get install chromium (the README's test command does)"
        )
    # Django refuses ORM calls from a thread with a running loop; here that loop is Playwright's.
    monkeypatch_module.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        yield browser
        browser.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(15_000)
    yield page
    context.close()


@pytest.fixture
def shot():
    ARTIFACTS.mkdir(exist_ok=True)

    def take(page, name: str) -> Path:
        path = ARTIFACTS / f"{name}.png"
        page.screenshot(path=str(path), full_page=True)
        return path

    return take


@pytest.fixture
def console_gateway(live_server, engines, settings):  # noqa: F811
    """A gateway that lets the live server's origin call it from the browser (the playground)."""
    proc = start_gateway(BERTH_GATEWAY_CORS_ORIGINS=live_server.url)
    settings.GATEWAY_PUBLIC_URL = proc.url + "/v1"
    yield proc
    proc.stop()
