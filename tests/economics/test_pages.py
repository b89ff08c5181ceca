"""The staff Economics page, its CSV and ``/api/v1/staff/economics``: staff only, same numbers."""

from __future__ import annotations

import csv
import io
from unittest import mock

import pytest
from django.test import Client
from rest_framework.test import APIClient

from tenants import keys
from tenants.constants import KeyKind, Role
from tests.economics.conftest import NOW
from tests.factories import PASSWORD, member
from tests.staff.conftest import staff_client, staff_user  # noqa: F401


@pytest.fixture(autouse=True)
def _frozen_now():
    with mock.patch("django.utils.timezone.now", return_value=NOW):
        yield


def test_page_shows_the_month_per_model_with_charts(fleet_month, staff_client):  # noqa: F811
    response = staff_client.get("/staff/economics/", {"month": "2026-03"})
    assert response.status_code == 200
    page = response.content.decode()
    assert 'id="economics-chart"' in page and 'data-chart="economics-money"' in page
    table = page[page.index('id="economics-models"') :]
    for figure in ("alpha", "20.00", "48.00", "-28.00", "24.0", "beta", "19.50", "-7.50"):
        assert figure in table
    assert 'aria-current="page">Economics' in page


def test_csv_has_one_row_per_model_and_a_total(fleet_month, staff_client):  # noqa: F811
    response = staff_client.get("/staff/economics/", {"month": "2026-03", "format": "csv"})
    assert response["Content-Type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(response.content.decode())))
    assert [r["model"] for r in rows] == ["alpha", "beta", "gamma", "total"]
    assert (rows[0]["revenue"], rows[0]["cost"], rows[0]["gpu_hours"]) == ("20.00", "48.00", "24.0")
    assert rows[3]["margin"] == "-36.00" and rows[3]["currency"] == "USD"


def test_bad_month_on_the_page_is_a_message_not_a_500(fleet_month, staff_client):  # noqa: F811
    response = staff_client.get("/staff/economics/", {"month": "nope"})
    assert response.status_code == 200 and "Choose a month as YYYY-MM." in response.content.decode()


def test_api_gives_staff_the_same_numbers(fleet_month, staff_user):  # noqa: F811
    api = APIClient()
    api.force_login(staff_user)
    body = api.get("/api/v1/staff/economics", {"month": "2026-03"}).json()
    alpha = next(m for m in body["models"] if m["model"] == "alpha")
    assert (alpha["revenue"], alpha["cost"], alpha["margin"], alpha["gpu_hours"]) == (
        "20.00",
        "48.00",
        "-28.00",
        24.0,
    )
    assert body["total"]["cost"] == "68.00" and body["currency"] == "USD"
    bad = api.get("/api/v1/staff/economics", {"month": "2026-13"})
    assert bad.status_code == 400 and "month" in bad.json()


def test_tenants_get_403_from_page_and_api(fleet_month):
    tenant = fleet_month["tenant"]
    owner = member(tenant, Role.OWNER, email="owner@demo.test", email_verified=True)
    browser = Client()
    assert browser.login(email=owner.email, password=PASSWORD)
    assert browser.get("/staff/economics/").status_code == 403
    assert browser.get("/api/v1/staff/economics").status_code == 403
    created = keys.create_api_key(tenant=tenant, name="ops", created_by=owner, kind=KeyKind.MANAGEMENT)
    api = APIClient(HTTP_AUTHORIZATION=f"Bearer {created.plaintext}")
    assert api.get("/api/v1/staff/economics", {"month": "2026-03"}).status_code == 403
    assert APIClient().get("/api/v1/staff/economics").status_code in (401, 403)
