"""Every main console page in a real browser: inputs are labelled, the keyboard reaches the
navigation and forms, the usage range updates in place (htmx) and the CSV downloads; screenshots."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from billing import invoicing
from billing.periods import parse_period
from tests.billing.usage import record
from tests.browser.helpers import log_in
from tests.factories import TenantFactory, free_plan, member
from tests.registry.factories import DeploymentFactory, priced_model

pytestmark = pytest.mark.django_db(transaction=True)

UNLABELLED = """() => [...document.querySelectorAll('main input, main select, main textarea')]
  .filter(el => el.type !== 'hidden' && !el.closest('[hidden]'))
  .filter(el => !(el.labels && el.labels.length) && !el.getAttribute('aria-label') && !el.getAttribute('aria-labelledby'))
  .map(el => el.name || el.id)"""


def test_main_pages_are_labelled_keyboard_usable_and_work(live_server, page, shot, tmp_path):
    free_plan()
    model = priced_model("chat-a11y", "0.30", "1.20", context_length=4096)
    DeploymentFactory(model=model)
    tenant = TenantFactory(name="Accessible Co")
    member(tenant, "owner", email="owner@a11y.test")
    now = timezone.now()
    for days in range(0, 20, 2):
        record(tenant, "chat-a11y", now - timedelta(days=days), 100_000 + days * 5_000, 40_000)
    october = parse_period("2026-10", "month")
    record(tenant, "chat-a11y", october.start + timedelta(days=3), 2_000_000, 500_000)
    invoicing.close_period(tenant=tenant, period=october, now=october.end)

    log_in(page, live_server.url, "owner@a11y.test")
    pages = {
        "console-overview": "/",
        "console-models": "/models/",
        "console-usage": "/usage/",
        "console-invoices": "/billing/",
        "console-keys": "/keys/",
        "console-team": "/team/",
        "console-guardrails": "/guardrails/",
        "console-settings": "/settings/",
        "console-audit": "/audit/",
    }
    for name, path in pages.items():
        page.goto(live_server.url + path)
        assert page.evaluate(UNLABELLED) == [], f"unlabelled inputs on {path}"
        assert page.locator("h1").count() == 1
        shot(page, name)

    # Keyboard: the skip link comes first, then the navigation.
    page.goto(live_server.url + "/usage/")
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.textContent.trim()") == "Skip to content"
    page.keyboard.press("Tab")
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.closest('nav') !== null")

    # The range form swaps the results in place (no reload) and redraws the chart.
    page.evaluate("window.__marker = 1")
    start = (now - timedelta(days=3)).date().isoformat()
    page.get_by_label("From", exact=True).fill(start)
    page.get_by_role("button", name="Show").click()
    page.wait_for_function("document.querySelector('#usage-results .lead')?.textContent.includes('–')")
    page.wait_for_function(f"location.search.includes('start={start}')")
    assert page.evaluate("window.__marker") == 1
    assert page.evaluate("Chart.getChart(document.querySelector('#usage-results canvas')) !== undefined")
    with page.expect_download() as download_info:
        page.get_by_role("link", name="Download CSV (every request)").click()
    path = tmp_path / "usage.csv"
    download_info.value.save_as(path)
    lines = path.read_text().splitlines()
    assert lines[0].startswith("occurred_at,request_id,model")
    assert len(lines) == 1 + 2  # today and two days ago

    # A bad range is a form error, not a crash.
    page.goto(f"{live_server.url}/usage/?start=2026-10-05&end=2026-10-01")
    assert page.get_by_role("alert").filter(has_text="on or after").is_visible()

    # Narrow screen: the page still fits (no horizontal scroll of the whole page).
    page.set_viewport_size({"width": 390, "height": 844})
    page.goto(live_server.url + "/")
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1")
    shot(page, "console-overview-narrow")
