"""The staff Economics page in a real browser, filled by ``manage.py demo_data``: both charts draw."""

from __future__ import annotations

import io
from datetime import timedelta

import pytest
from django.core.management import call_command
from django.utils import timezone
from playwright.sync_api import expect

from tenants.models import User
from tests.browser.test_staff_dashboard import log_in

pytestmark = pytest.mark.django_db(transaction=True)


def test_economics_page_draws_demo_month(live_server, page, shot):
    call_command("demo_data", "--days", "3", "--scale", "0.3", stdout=io.StringIO())
    staff = User.objects.create_user(email="ops@berth.test", password="x-Long-pass-1", is_staff=True)
    log_in(page, live_server, staff)
    month = timezone.now() - timedelta(days=1)  # the 3 days always reach into it
    page.goto(f"{live_server.url}/staff/economics/?month={month:%Y-%m}")
    expect(page.get_by_role("img", name="Bar chart: revenue and cost per model", exact=False)).to_be_visible()
    for chart in ("economics-money", "economics-hours"):
        assert page.evaluate(f"!!Chart.getChart(document.querySelector('canvas[data-chart={chart}]'))"), chart
    expect(page.locator("#economics-models")).to_contain_text("demo-llama-3.1-8b")
    shot(page, "staff-economics")
    with page.expect_download() as download:
        page.get_by_role("link", name="Download CSV").click()
    assert download.value.suggested_filename.startswith("berth-economics-")
